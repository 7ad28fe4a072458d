"""Python faces of DeepSpeed's C++/CUDA ops (filled in by the ops issue)."""

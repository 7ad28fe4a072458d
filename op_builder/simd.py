"""CPU SIMD levels: which one this CPU can run, and the compiler flags of each.

The CPU kernels are written three times over one set of macros: AVX512 (16
floats per vector), AVX2 (8 floats) and scalar. The level is a build-time
choice, so it is part of a build's identity (its cache key and module name),
and a build for a level this CPU lacks must never be loaded: it would die
with SIGILL at the first call, not with an error.

Explicit ``-m`` flags are used instead of ``-march=native`` so that the code
a level produces depends only on the level, never on the build machine.
"""
import functools
import platform
from typing import FrozenSet, List, Optional, Sequence

__all__ = ["SIMD_LEVELS", "SIMD_WIDTH", "cpu_features", "detect_simd", "simd_flags", "missing_features"]

#: Levels from the widest to the narrowest; detection picks the first this CPU supports.
SIMD_LEVELS = ("avx512", "avx2", "scalar")

#: fp32 lanes per vector of each level (what the ops' ``simd_width()`` returns).
SIMD_WIDTH = {"avx512": 16, "avx2": 8, "scalar": 1}

# CPU flags (as py-cpuinfo and /proc/cpuinfo spell them) that each level's code
# may use. AVX512 builds also use the AVX2/FMA/F16C instructions for fp16 loads.
_REQUIRED_FEATURES = {
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"),
    "avx2": ("avx2", "fma", "f16c"),
    "scalar": (),
}

# The -D macro selects the kernel's code path; the -m flags let the compiler
# emit the instructions of that path (and nothing wider).
_LEVEL_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c", "-D__AVX512__"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-D__AVX256__"],
    "scalar": ["-D__SCALAR__"],
}


def _proc_cpuinfo_flags() -> FrozenSet[str]:
    """Fallback when py-cpuinfo is unavailable or fails (Linux only)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_features() -> FrozenSet[str]:
    """This CPU's feature flags, lower case (e.g. ``avx2``, ``avx512f``).

    Cached because py-cpuinfo runs a Python subprocess (about a second), and
    the answer cannot change while the process lives.
    """
    try:
        import cpuinfo  # py-cpuinfo; imported here so that importing op_builder stays cheap

        flags = cpuinfo.get_cpu_info().get("flags") or []
    except Exception:  # noqa: BLE001  (a broken probe must degrade to the fallback, not fail a build)
        flags = []
    features = frozenset(str(f).lower() for f in flags) or _proc_cpuinfo_flags()
    return features


def missing_features(level: str, features: Optional[Sequence[str]] = None) -> List[str]:
    """CPU flags that ``level`` needs and this CPU (or ``features``) lacks."""
    if level not in _REQUIRED_FEATURES:
        raise ValueError(f"unknown SIMD level {level!r}; expected one of {SIMD_LEVELS}")
    if features is None:
        if level != "scalar" and platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
            return [f"an x86 CPU (this is {platform.machine()})"]
        features = cpu_features()
    have = frozenset(features)
    return [flag for flag in _REQUIRED_FEATURES[level] if flag not in have]


def detect_simd(features: Optional[Sequence[str]] = None) -> str:
    """The widest level this CPU (or the given feature set) supports."""
    for level in SIMD_LEVELS:
        if not missing_features(level, features):
            return level
    return "scalar"


def simd_flags(level: str) -> List[str]:
    """Compiler flags (``-m`` options and the selecting ``-D`` macro) of ``level``."""
    if level not in _LEVEL_FLAGS:
        raise ValueError(f"unknown SIMD level {level!r}; expected one of {SIMD_LEVELS}")
    return list(_LEVEL_FLAGS[level])

"""Every CUDA source under csrc/ compiles with nvcc to an object file.

This runs on machines without a GPU, so a CUDA syntax or template error
fails CI instead of surfacing on the first GPU run. Kernels are meant to be
torch-free (plain CUDA + a small launcher API); a .cu that includes torch
headers gets torch's include directories added. torch's own nvcc defines
(no implicit half/bf16 conversions) are used, since JIT builds see them too.
Nothing is cached: each object goes to a fresh temporary directory.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
CU_FILES = sorted(CSRC.rglob("*.cu"))
# Architectures nvcc 11.8 .. 13.x all support (A100 and H100).
ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
# What torch.utils.cpp_extension passes to nvcc for every CUDA extension.
TORCH_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"
]
_TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10)/', re.MULTILINE)


def _find_nvcc() -> Optional[str]:
    """nvcc from CUDA_HOME/CUDA_PATH (the test environment's choice), else the PATH."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _torch_includes() -> List[str]:
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    return [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]


def test_csrc_has_cuda_sources() -> None:
    # Guards against the parametrized test silently collecting nothing.
    assert {"multi_tensor_adam.cu", "quantize.cu", "dequantize.cu"} <= {p.name for p in CU_FILES}


@pytest.mark.parametrize("source", CU_FILES, ids=[str(p.relative_to(CSRC)) for p in CU_FILES])
def test_nvcc_compiles(source: Path, tmp_path: Path) -> None:
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on the PATH); CUDA sources were not compiled")
    cmd = [nvcc, "-c", "-std=c++17", "-O2", *ARCHS, *TORCH_DEFINES, f"-I{CSRC / 'includes'}"]
    if _TORCH_INCLUDE.search(source.read_text()):
        cmd += _torch_includes()
    obj = tmp_path / (source.stem + ".o")
    cmd += ["-o", str(obj), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nvcc failed on {source.relative_to(REPO)}:\n{' '.join(cmd)}\n{proc.stderr}"
    assert obj.stat().st_size > 0


# The torch bindings of the CUDA ops (.cpp files that include c10/cuda) are
# checked with the host compiler in syntax-only mode, against this torch's
# headers and the toolkit's. A CPU-only torch wheel ships c10/cuda headers but
# not the one header its CMake build generates; a stand-in is written for it.
CUDA_BINDINGS = sorted(p for p in CSRC.rglob("*.cpp") if "c10/cuda/" in p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_BINDINGS, ids=[str(p.relative_to(CSRC)) for p in CUDA_BINDINGS])
def test_cuda_binding_syntax(source: Path, tmp_path: Path) -> None:
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on the PATH); no CUDA headers to check against")
    from torch.utils.cpp_extension import CUDA_HOME, get_cxx_compiler, include_paths

    stub_dir = tmp_path / "stub"
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
        (stub_dir / "c10/cuda/impl").mkdir(parents=True)
        (stub_dir / "c10/cuda/impl/cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    candidates = [Path(CUDA_HOME) / "include"] if CUDA_HOME else []
    candidates += [Path(nvcc).resolve().parent.parent / "include", Path("/usr/local/cuda/include")]
    cuda_include = next((c for c in candidates if (c / "cuda_runtime.h").exists()), None)
    if cuda_include is None:
        pytest.skip(f"cuda_runtime.h not found under {', '.join(map(str, candidates))}")
    cmd = [get_cxx_compiler(), "-fsyntax-only", "-std=c++20", "-w", "-DTORCH_EXTENSION_NAME=ds_syntax_check",
           *_torch_includes(), f"-I{stub_dir}", f"-I{cuda_include}", f"-I{CSRC / 'includes'}", str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{source.relative_to(REPO)} does not compile:\n{' '.join(cmd)}\n{proc.stderr}"

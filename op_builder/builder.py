"""``OpBuilder``: how one C++/CUDA op is compiled, cached and loaded.

A builder is declarative: a subclass names its op, its sources and its
flags. This base turns that into either an import of the module pre-built at
install time or a JIT build with ``torch.utils.cpp_extension.load`` (ninja).

[Note: build cache key] A JIT build lives in
``<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions>/<python+torch tag>/<module name>``
where the module name is ``<op>[_<variant>]_<hash>`` and the hash covers
everything that changes the binary: the op name, every compiler and linker
flag, the variant (SIMD level), the CPU feature flags (CPU ops) or the CUDA
version and GPU architectures (CUDA ops), the torch and Python versions, and
the contents of the sources and of the local headers they include. So a
changed flag or source means a new directory and a fresh build, a build for
one CPU is never loaded on another, and two variants of one op (say the
scalar and AVX512 builds) load side by side in one process under different
module names.
"""
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import sys
import types
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .build_lock import BuildLock, OpBuildError
from .installed import read_installed_ops
from .simd import SIMD_LEVELS, cpu_features, detect_simd, missing_features, simd_flags

__all__ = ["OpBuilder", "CPUOpBuilder", "CUDAOpBuilder", "OpBuildError"]

logger = logging.getLogger(__name__)

# Bump when the meaning of the cache key changes, to orphan old directories.
_KEY_SCHEMA = 1
_HASH_CHARS = 12
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)

# Where sources() and include_paths() resolve: the parent of this package is
# the repo root in a checkout / editable install (csrc/ sits beside
# op_builder/), and `deepspeed/ops` in an installed package (setup.py ships
# csrc/ as `deepspeed/ops/csrc`, beside `deepspeed/ops/op_builder`).
_SEARCH_ROOTS = (Path(__file__).resolve().parent.parent,)


def _extensions_root(build_root: Optional[str]) -> Path:
    """The cache root, honouring ``TORCH_EXTENSIONS_DIR`` exactly as torch does.

    This is torch's documented variable for its extension cache, so the op
    builder reads it just as ``cpp_extension.load`` would.
    """
    root = build_root or os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return Path(root)


def _runtime_tag() -> str:
    """Python + torch + accelerator tag of the directory holding all builds."""
    accel = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    torch_version = torch.__version__.split("+")[0]
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return f"{python}_torch{torch_version}_{accel}"


class OpBuilder(ABC):
    """Base of every op builder; see [Note: build cache key]."""

    #: Op name, as listed by ds_report and used in ``DS_BUILD_<OP>`` (e.g. ``cpu_adam``).
    NAME: str = ""
    #: Environment variable that turns pre-building of this op on/off at install.
    BUILD_VAR: str = ""
    #: Seconds ``jit_load`` waits for another process's build before giving up.
    BUILD_TIMEOUT_S: float = 1800.0
    #: How often a waiting process re-checks the build lock.
    LOCK_POLL_S: float = 0.2
    #: Age past which a lock taken on another host (shared cache) is presumed dead.
    FOREIGN_LOCK_STALE_S: float = 7200.0
    #: Whether the sources include CUDA files (passed as ``with_cuda``).
    WITH_CUDA: bool = False

    def __init__(self, build_timeout_s: Optional[float] = None, build_root: Optional[str] = None) -> None:
        self.build_timeout_s = self.BUILD_TIMEOUT_S if build_timeout_s is None else float(build_timeout_s)
        # None: TORCH_EXTENSIONS_DIR, else torch's default cache (tests point it at a tmp dir).
        self.build_root = build_root
        #: Why the last is_compatible() said no (None while compatible).
        self.error_log: Optional[str] = None
        #: Seconds the last jit_load() waited for another process's build.
        self.last_wait_s = 0.0

    # ---- what a subclass declares -------------------------------------------------

    @abstractmethod
    def absolute_name(self) -> str:
        """Import path of the pre-built module, e.g. ``deepspeed.ops.adam.cpu_adam_op``."""

    @abstractmethod
    def sources(self) -> List[str]:
        """Source files, relative to the package root (e.g. ``csrc/cpu/adam/cpu_adam.cpp``)."""

    def include_paths(self) -> List[str]:
        """Include directories, relative to the package root like ``sources()``."""
        return []

    def cxx_args(self) -> List[str]:
        # No -std flag: torch adds the standard its own headers need (c++17 in
        # older releases, c++20 in 2.13), and forcing an older one could break them.
        return ["-O3", "-g0"]

    def nvcc_args(self) -> List[str]:
        return []

    def extra_ldflags(self) -> List[str]:
        return []

    @abstractmethod
    def is_compatible(self, verbose: bool = False) -> bool:
        """Whether this op can be built and run here; sets ``error_log`` when not."""

    def is_buildable(self, verbose: bool = False) -> bool:
        """Whether the op can be compiled here (pre-building needs no device)."""
        return self.is_compatible(verbose)

    def variant(self) -> str:
        """What distinguishes this build from other builds of the same op ('' if nothing)."""
        return ""

    def _key_extras(self) -> Dict[str, Any]:
        """Machine facts a subclass's binaries depend on (CPU features, GPU archs)."""
        return {}

    # ---- shared machinery --------------------------------------------------------

    @property
    def compatible_reason(self) -> Optional[str]:
        return self.error_log

    def _fail(self, reason: str, verbose: bool) -> bool:
        self.error_log = reason
        if verbose:
            logger.warning("%s is not compatible: %s", self.NAME, reason)
        return False

    def resolve_path(self, relative: str) -> str:
        """Absolute path of a file named by ``sources()``/``include_paths()``."""
        if os.path.isabs(relative):
            return relative
        for root in _SEARCH_ROOTS:
            candidate = root / relative
            if candidate.exists():
                return str(candidate)
        raise OpBuildError(f"{relative} not found (looked under {', '.join(map(str, _SEARCH_ROOTS))}); "
                           f"the install is missing its csrc/ sources")

    def absolute_sources(self) -> List[str]:
        return [self.resolve_path(s) for s in self.sources()]

    def absolute_include_paths(self) -> List[str]:
        """Existing include directories; a missing one would contribute nothing."""
        found = []
        for relative in self.include_paths():
            try:
                found.append(self.resolve_path(relative))
            except OpBuildError:
                pass
        return found

    def _source_digest(self) -> str:
        """Hash of the sources and of the local headers they include, transitively."""
        include_dirs = [Path(p) for p in self.absolute_include_paths()]
        digest = hashlib.sha256()
        seen: set = set()
        pending = [Path(p) for p in self.absolute_sources()]
        while pending:
            path = pending.pop(0)
            if path in seen:
                continue
            seen.add(path)
            data = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
            for name in _LOCAL_INCLUDE.findall(data.decode("utf-8", errors="replace")):
                for base in [path.parent] + include_dirs:
                    if (base / name).is_file():
                        pending.append((base / name).resolve())
                        break
        return digest.hexdigest()

    def build_key(self) -> Dict[str, Any]:
        """Everything the compiled binary depends on (see [Note: build cache key])."""
        return {
            "schema": _KEY_SCHEMA,
            "op": self.NAME,
            "variant": self.variant(),
            "cxx_args": self.cxx_args(),
            "nvcc_args": self.nvcc_args() if self.WITH_CUDA else [],
            "ldflags": self.extra_ldflags(),
            "with_cuda": self.WITH_CUDA,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "python": sys.version.split()[0],
            "sources": self._source_digest(),
            **self._key_extras(),
        }

    def build_hash(self) -> str:
        text = json.dumps(self.build_key(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]

    def jit_module_name(self) -> str:
        """Unique per build, e.g. ``cpu_adam_avx512_3f9a0c1d2e4b``."""
        parts = [self.NAME] + ([self.variant()] if self.variant() else []) + [self.build_hash()]
        return "_".join(parts)

    def build_directory(self, module_name: Optional[str] = None) -> str:
        name = module_name or self.jit_module_name()
        return str(_extensions_root(self.build_root) / _runtime_tag() / name)

    def is_prebuilt(self) -> bool:
        """Whether install-time pre-building produced a module valid for this build."""
        entry = read_installed_ops().get(self.NAME)
        if not entry or entry.get("torch") != torch.__version__ or entry.get("variant", "") != self.variant():
            return False
        try:
            return importlib.util.find_spec(self.absolute_name()) is not None
        except (ImportError, ValueError):
            return False

    def builder(self) -> Any:
        """A setuptools Extension for pre-building at install (run from the repo root)."""
        from torch.utils.cpp_extension import CppExtension

        return CppExtension(name=self.absolute_name(), sources=self.sources(),
                            include_dirs=self.absolute_include_paths(),
                            extra_compile_args={"cxx": self.cxx_args()}, extra_link_args=self.extra_ldflags())

    def load(self, verbose: bool = False) -> types.ModuleType:
        """The op's module: the pre-built one if installed and valid, else a JIT build."""
        if self.is_prebuilt():
            try:
                return importlib.import_module(self.absolute_name())
            except ImportError as err:
                logger.warning("pre-built %s (%s) failed to import (%s); compiling it instead",
                               self.NAME, self.absolute_name(), err)
        return self.jit_load(verbose)

    def jit_load(self, verbose: bool = False) -> types.ModuleType:
        """Compile (once per cache key, across processes) and import the op."""
        from torch.utils.cpp_extension import is_ninja_available, load

        if not self.is_compatible(verbose):
            raise OpBuildError(f"op {self.NAME} cannot be built here: {self.error_log}")
        if not is_ninja_available():
            raise OpBuildError(f"op {self.NAME} needs ninja to be JIT-compiled, and ninja was not found: "
                               f"pip install ninja (or pre-build it at install with {self.BUILD_VAR}=1)")
        name = self.jit_module_name()
        # Already loaded by this process: torch would re-run ninja and re-import.
        if name in sys.modules:
            self.last_wait_s = 0.0
            return sys.modules[name]
        build_dir = self.build_directory(name)
        os.makedirs(build_dir, exist_ok=True)
        lock = BuildLock(os.path.join(build_dir, "ds_build.lock"), timeout_s=self.build_timeout_s,
                         poll_s=self.LOCK_POLL_S, foreign_stale_s=self.FOREIGN_LOCK_STALE_S,
                         torch_lock=os.path.join(build_dir, "lock"))
        with lock:
            if name in sys.modules:  # another thread of this process loaded it while we waited
                self.last_wait_s = lock.waited_s
                return sys.modules[name]
            if verbose:
                logger.info("building/loading op %s in %s", self.NAME, build_dir)
            try:
                module = load(name=name, sources=self.absolute_sources(),
                              extra_include_paths=self.absolute_include_paths(), extra_cflags=self.cxx_args(),
                              extra_cuda_cflags=self.nvcc_args() if self.WITH_CUDA else None,
                              extra_ldflags=self.extra_ldflags(), with_cuda=self.WITH_CUDA,
                              build_directory=build_dir, verbose=verbose)
            except (RuntimeError, OSError, ImportError) as err:
                raise OpBuildError(f"building op {self.NAME} in {build_dir} failed: {err}") from err
        self.last_wait_s = lock.waited_s
        sys.modules[name] = module
        return module


def _missing_sources(builder: OpBuilder) -> Optional[str]:
    try:
        builder.absolute_sources()
    except OpBuildError as err:
        return str(err)
    return None


class CPUOpBuilder(OpBuilder):
    """A C++ op for the CPU, built for one SIMD level (see ``simd.py``).

    ``simd`` is "avx512", "avx2" or "scalar"; None picks the widest level
    this CPU supports. The level is part of the module name and cache key,
    so tests can load the scalar and SIMD builds side by side.
    """

    def __init__(self, simd: Optional[str] = None, build_timeout_s: Optional[float] = None,
                 build_root: Optional[str] = None) -> None:
        super().__init__(build_timeout_s=build_timeout_s, build_root=build_root)
        if simd is not None and simd not in SIMD_LEVELS:
            raise ValueError(f"{self.NAME}: unknown SIMD level {simd!r}; expected one of {SIMD_LEVELS} or None")
        self._requested_simd = simd

    @property
    def simd(self) -> str:
        """The SIMD level this builder compiles for."""
        return self._requested_simd or detect_simd()

    def variant(self) -> str:
        return self.simd

    def cxx_args(self) -> List[str]:
        return super().cxx_args() + ["-fopenmp"] + simd_flags(self.simd)

    def extra_ldflags(self) -> List[str]:
        # -fopenmp links libgomp.so.1; torch's wheel already loaded a library of
        # that soname, so the op shares torch's OpenMP runtime and thread pool.
        return super().extra_ldflags() + ["-fopenmp"]

    def _key_extras(self) -> Dict[str, Any]:
        return {"cpu_arch": platform.machine(), "cpu_features": sorted(cpu_features())}

    def is_compatible(self, verbose: bool = False) -> bool:
        self.error_log = None
        from torch.utils.cpp_extension import get_cxx_compiler

        compiler = get_cxx_compiler()
        if shutil.which(compiler) is None:
            return self._fail(f"no C++ compiler: {compiler!r} is not on the PATH (install g++ or set CXX)", verbose)
        missing = missing_features(self.simd)
        if missing:
            return self._fail(f"the {self.simd} build needs CPU support for {', '.join(missing)}, which this CPU "
                              f"lacks (use simd='scalar' or leave simd unset to detect it)", verbose)
        problem = _missing_sources(self)
        if problem:
            return self._fail(problem, verbose)
        return True


class CUDAOpBuilder(OpBuilder):
    """A C++/CUDA op: needs a CUDA build of torch, a GPU to run and nvcc to build."""

    WITH_CUDA = True

    def nvcc_args(self) -> List[str]:
        # torch adds the -gencode flags for the visible GPUs (or TORCH_CUDA_ARCH_LIST).
        return ["-O3", "--use_fast_math", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                "-U__CUDA_NO_BFLOAT16_OPERATORS__"]

    def variant(self) -> str:
        return "cuda"

    @staticmethod
    def nvcc_path() -> Optional[str]:
        """nvcc from torch's CUDA_HOME (CUDA_HOME/CUDA_PATH or /usr/local/cuda), else the PATH."""
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME and os.access(os.path.join(CUDA_HOME, "bin", "nvcc"), os.X_OK):
            return os.path.join(CUDA_HOME, "bin", "nvcc")
        return shutil.which("nvcc")

    def _key_extras(self) -> Dict[str, Any]:
        archs: List[str] = []
        if torch.version.cuda and torch.cuda.is_available():
            archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return {"nvcc": self.nvcc_path(), "gpu_archs": archs}

    def is_buildable(self, verbose: bool = False) -> bool:
        self.error_log = None
        if not torch.version.cuda:
            return self._fail(f"torch {torch.__version__} was built without CUDA", verbose)
        if self.nvcc_path() is None:
            return self._fail("nvcc not found (set CUDA_HOME to the CUDA toolkit or put nvcc on the PATH)", verbose)
        problem = _missing_sources(self)
        if problem:
            return self._fail(problem, verbose)
        return True

    def is_compatible(self, verbose: bool = False) -> bool:
        if not self.is_buildable(verbose):
            return False
        if not torch.cuda.is_available():
            return self._fail("no CUDA GPU is available to run it", verbose)
        return True

    def builder(self) -> Any:
        from torch.utils.cpp_extension import CUDAExtension

        return CUDAExtension(name=self.absolute_name(), sources=self.sources(),
                             include_dirs=self.absolute_include_paths(),
                             extra_compile_args={"cxx": self.cxx_args(), "nvcc": self.nvcc_args()},
                             extra_link_args=self.extra_ldflags())

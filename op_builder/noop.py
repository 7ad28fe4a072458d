"""Builder of ``noop``, a trivial op for testing the build machinery.

Not in ``ALL_OPS`` (nothing uses it and it is never pre-built). It compiles
in about a second, so tests of locking, cache keys and flags can build it
for real. ``extra_flags`` are appended to the compile flags, which is how a
test changes a flag (e.g. ``["-DNOOP_VALUE=7"]``).
"""
from typing import List, Optional, Sequence

from .builder import CPUOpBuilder

__all__ = ["NoopBuilder"]


class NoopBuilder(CPUOpBuilder):
    NAME = "noop"
    BUILD_VAR = "DS_BUILD_NOOP"

    def __init__(self, simd: Optional[str] = None, extra_flags: Sequence[str] = (),
                 build_timeout_s: Optional[float] = None, build_root: Optional[str] = None) -> None:
        super().__init__(simd=simd, build_timeout_s=build_timeout_s, build_root=build_root)
        self.extra_flags = list(extra_flags)

    def absolute_name(self) -> str:
        return "deepspeed.ops.noop_op"

    def sources(self) -> List[str]:
        return ["csrc/test_ops/noop.cpp"]

    def cxx_args(self) -> List[str]:
        return super().cxx_args() + self.extra_flags

"""Wall-clock timers for `wall_clock_breakdown`."""
import time
from typing import Callable, Dict, Optional

__all__ = ["SynchronizedWallClockTimer"]


class _Timer:
    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._start: Optional[float] = None
        self.elapsed_s = 0.0

    def start(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        self._sync()
        self.elapsed_s += time.perf_counter() - self._start
        self._start = None

    def elapsed_ms(self, reset: bool = True) -> float:
        value = self.elapsed_s * 1000.0
        if reset:
            self.elapsed_s = 0.0
        return value


class SynchronizedWallClockTimer:
    """Named timers that synchronise the device before reading the clock."""

    def __init__(self, synchronize: Callable[[], None] = lambda: None) -> None:
        self._sync = synchronize
        self._timers: Dict[str, _Timer] = {}

    def __call__(self, name: str) -> _Timer:
        if name not in self._timers:
            self._timers[name] = _Timer(self._sync)
        return self._timers[name]

    def has(self, name: str) -> bool:
        return name in self._timers

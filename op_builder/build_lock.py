"""A build lock that reports dead owners instead of waiting on them forever.

[Note: build locks] Every rank of a job calls ``load()`` at about the same
time, and all of them resolve to the same build directory. Exactly one may
compile; the others must wait for it and then load its result. PyTorch's own
``FileBaton`` does this with an empty ``lock`` file, and waits for it to
disappear with no timeout: a build killed by Ctrl-C, the OOM killer or a
scheduler leaves the file behind, and every later job hangs silently.

So the JIT path wraps PyTorch's build in this lock, whose file records who
holds it (host, PID, the PID's start time, the wall-clock start). A waiter
polls it and

* acquires it as soon as the holder releases it (then loads, not rebuilds,
  because the build directory is already up to date);
* raises ``OpBuildError`` at once if the holder is a dead process on this
  host (or a reused PID: its start time no longer matches), or, for another
  host sharing the cache, if the lock is older than ``foreign_stale_s``;
* raises ``OpBuildError`` after ``timeout_s`` in any case.

Once this lock is held, PyTorch's ``lock`` in the same directory can only be
the leftover of a killed build (every live builder holds ours first), so it
is reported the same way rather than waited on.
"""
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Optional, Type

__all__ = ["OpBuildError", "LockOwner", "BuildLock"]

# A lock file is created empty and filled right after; an unreadable file
# younger than this is a holder that has not finished writing yet.
_UNREADABLE_GRACE_S = 10.0


class OpBuildError(RuntimeError):
    """An op could not be built or loaded; the message says why and what to do."""


def _proc_start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (Linux), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # Fields after the parenthesised command name; starttime is field 22 overall.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _proc_state(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class LockOwner:
    """Who holds a build lock; serialised as JSON into the lock file."""

    host: str
    pid: int
    #: time.time() when the lock was taken, for the message and for foreign hosts.
    started: float
    #: /proc start time of ``pid``, so a recycled PID is not mistaken for the builder.
    proc_start: Optional[str] = None

    @classmethod
    def current(cls) -> "LockOwner":
        return cls(host=socket.gethostname(), pid=os.getpid(), started=time.time(),
                   proc_start=_proc_start_time(os.getpid()))

    @classmethod
    def from_json(cls, text: str) -> Optional["LockOwner"]:
        try:
            raw = json.loads(text)
            return cls(host=str(raw["host"]), pid=int(raw["pid"]), started=float(raw["started"]),
                       proc_start=raw.get("proc_start"))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"PID {self.pid} on host {self.host!r}, started {when}"

    def is_alive_here(self) -> bool:
        """Whether the owner still runs; only meaningful when ``host`` is this host."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        if _proc_state(self.pid) in ("Z", "X"):
            return False  # killed, not yet reaped by its parent
        if self.proc_start is not None:
            now = _proc_start_time(self.pid)
            if now is not None and now != self.proc_start:
                return False
        return True


class BuildLock:
    """Exclusive lock on one build directory (see [Note: build locks]).

    Use as a context manager. ``torch_lock`` is the path of PyTorch's own
    baton in the same directory, checked once this lock is held.
    """

    def __init__(self, path: str, timeout_s: float, poll_s: float = 0.2, foreign_stale_s: float = 7200.0,
                 torch_lock: Optional[str] = None) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        # A lock from another host cannot be probed; past this age it is presumed dead.
        self.foreign_stale_s = foreign_stale_s
        self.torch_lock = torch_lock
        #: Seconds spent waiting for another holder in the last acquire().
        self.waited_s = 0.0
        self._held = False

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(LockOwner.current().to_json())
        return True

    def _read_owner(self) -> Optional[LockOwner]:
        with open(self.path) as handle:
            return LockOwner.from_json(handle.read())

    def _stale_message(self, owner: LockOwner) -> Optional[str]:
        if owner.host == socket.gethostname():
            if owner.is_alive_here():
                return None
            why = "which is no longer running (the build was killed or crashed)"
        else:
            age = time.time() - owner.started
            if age <= self.foreign_stale_s:
                return None
            why = f"on another host, {age / 3600:.1f} h ago (older than the {self.foreign_stale_s:.0f} s limit)"
        return (f"stale op build lock {self.path}: it is held by {owner.describe()}, {why}. No build is in "
                f"progress. Delete {self.path} and retry.")

    def acquire(self) -> float:
        """Take the lock, waiting for a live holder; returns the seconds waited."""
        start = time.monotonic()
        while not self._try_create():
            try:
                owner = self._read_owner()
            except FileNotFoundError:
                continue  # released between our create and our read: try again at once
            if owner is None:
                try:
                    age = time.time() - os.path.getmtime(self.path)
                except FileNotFoundError:
                    continue
                if age > _UNREADABLE_GRACE_S:
                    raise OpBuildError(f"op build lock {self.path} is unreadable (its owner died while taking it). "
                                       f"Delete {self.path} and retry.")
            else:
                message = self._stale_message(owner)
                if message:
                    raise OpBuildError(message)
            waited = time.monotonic() - start
            if waited > self.timeout_s:
                holder = owner.describe() if owner else "an unknown process"
                raise OpBuildError(f"timed out after {waited:.0f} s waiting for the op build lock {self.path}, held "
                                   f"by {holder}. If that build is stuck, stop it or delete {self.path} and retry; "
                                   f"for slow builds raise the builder's build_timeout_s.")
            time.sleep(self.poll_s)
        self._held = True
        self.waited_s = time.monotonic() - start
        if self.torch_lock and os.path.exists(self.torch_lock):
            self.release()
            raise OpBuildError(f"stale PyTorch build lock {self.torch_lock}: it was left by a killed build (no build "
                               f"is running: this process holds {self.path}), and PyTorch would wait on it forever. "
                               f"Delete {self.torch_lock} and retry.")
        return self.waited_s

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()

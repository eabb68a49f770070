"""One run per workspace, and SIGTERM handled as SIGINT is.

`workspace_lock` holds an exclusive lock on `ROOT/.geno-pipeline.lock` for the whole of a stage's command, so a second
`data`, `preflight`, `train`, `sweep` or `release` in the same folder stops at once, naming the process that holds it,
instead of replacing the first one's outputs or deleting its staging folders. The lock is the kernel's (`flock`): it
goes with the process that holds it, so a killed run never leaves one behind; the file only records who held it last.
A killed run's forked children hold it until they have exited too: when the process the file names is gone, a new
run waits for them (at most `ORPHAN_WAIT_S`) instead of being refused.

`terminate_as_interrupt` makes SIGTERM, what schedulers send before they kill, raise `Terminated` (a
KeyboardInterrupt) where it arrives, so a stage stops the way it does on Ctrl-C: nothing half-written, one line, exit
143.
"""

from __future__ import annotations

import fcntl
import logging  # noqa: F401  (imported first: its at-fork callbacks are registered before ours, below)
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from geno_pipeline.errors import WorkspaceBusyError

__all__ = ["LOCK_NAME", "Terminated", "check_terminated", "terminate_as_interrupt", "workspace_lock"]

LOCK_NAME = ".geno-pipeline.lock"


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised in the main thread where the signal lands, like SIGINT's KeyboardInterrupt."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its pid yet"


# How long to wait for the lock when the process it names is gone: its forked children (the checkpoint writer) hold
# the lock until they exit, which the kernel makes them do when it dies (PR_SET_PDEATHSIG); under load that takes a
# moment, and a resume started right after a kill must not be refused for it.
ORPHAN_WAIT_S = 10.0


def _recorded_pid(fd: int) -> int | None:
    """The pid the lock file names (`pid N: ...`), or None."""
    words = _holder(fd).split()
    if len(words) >= 2 and words[0] == "pid" and words[1].rstrip(":").isdigit():
        return int(words[1].rstrip(":"))
    return None


def _gone(pid: int | None) -> bool:
    """Whether process `pid` no longer exists (a zombie still does: its parent has not reaped it)."""
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, as another user's process
        return False
    return False


def _take(fd: int, *, wait_s: float = ORPHAN_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Take the lock now; or, while the process the file names is gone (its children are exiting), within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not _gone(_recorded_pid(fd)) or time.monotonic() >= deadline:
                return False
        sleep(0.02)


@contextmanager
def workspace_lock(root: Path, command: str) -> Iterator[None]:
    """Hold the workspace's lock for the block; `WorkspaceBusyError` (exit 2) at once when another run holds it. Where
    the lock file cannot be created (a read-only or missing folder, where no run can write either) there is no lock."""
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield
        return
    try:
        if not _take(fd):
            raise WorkspaceBusyError(
                f"{root}: another geno-pipeline run is using this workspace ({_holder(fd)}); two runs in one folder would "
                f"replace each other's outputs; fix: wait for it to finish, or stop it, then run again (the lock goes with "
                f"its process: a killed run never leaves it behind)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: geno-pipeline {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


_requested: list[bool] = [False]  # a SIGTERM arrived during the current `terminate_as_interrupt` block
_forking: list[bool] = [False]  # between this process's at-fork callbacks


def _fork_started() -> None:
    _forking[0] = True


def _fork_done() -> None:
    _forking[0] = False


# Registered after logging's own at-fork callbacks (logging is imported above), so these wrap them: `before` callbacks
# run in reverse order of registration, `after` callbacks in order.
os.register_at_fork(before=_fork_started, after_in_parent=_fork_done, after_in_child=_fork_done)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: raise `Terminated`, except inside a fork's callbacks, where Python would print the exception as
    ignored and drop it: then it is only remembered, for `check_terminated` at the next safe point."""
    _requested[0] = True
    if not _forking[0]:
        raise Terminated()


def check_terminated() -> None:
    """Raise `Terminated` when a SIGTERM arrived but was not raised where it landed: inside a fork's callbacks (the
    checkpoint writer's fork), or in a finaliser, where Python prints an exception as ignored and drops it. Long-running
    work calls this at its safe points."""
    if _requested[0]:
        raise Terminated()


@contextmanager
def terminate_as_interrupt(*, then_ignore: bool = False) -> Iterator[None]:
    """SIGTERM raises `Terminated` for the block (main thread only). After it the previous handler is restored, or, with
    `then_ignore`, SIGTERM is ignored: a process whose command has finished then exits with the command's code instead
    of being killed during interpreter teardown."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    _requested[0] = False
    try:
        yield
        check_terminated()  # one that was lost on the way still ends the block as a SIGTERM
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if then_ignore else previous)
        _requested[0] = False  # outside a block there is nothing to stop

"""A writer that runs jobs in order beside training (checkpoints: see `TrainingRun.checkpoint`), in a forked process or
on a thread.

Both kinds take a `handler` when they start and run `handler(payload)` for each submitted payload. At most one job is
in flight: `submit` waits for the previous one first, so jobs finish in the order they were submitted and a slow disk
holds training back instead of piling up snapshots in memory. A job's error is raised in the training thread at the
next `submit` or `wait`.

`ProcessWriter` (Linux) forks a process that serves every job of the run. The payload is pickled to it through a
pipe, so it must own its data (`TensorBytes`, not live tensors) and the handler must not call torch: the child only
serializes, hashes, writes, syncs and renames (pure Python and system calls), which keeps the fork safe with torch's
threads in the parent. The child's Python runs on another core, free of the training thread's GIL. It was made for
the CPU tiny profile, which checkpoints every 4 steps of a ~5 ms step: there a thread's jobs slowed the loop's own
parts by about as much as running them on the training thread would (the thread saves only the disk waits, when the
GIL is released; docs/performance.md). The child keeps its own copy of what the handler closes over (the logs' running
hashes), so the parent must not use those parts itself; the kernel kills it if the parent dies (PR_SET_PDEATHSIG).

`ThreadWriter` runs the jobs on one worker thread: the fallback where fork is not safe or not available.

`busy_seconds` counts how long jobs ran, where they ran.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from geno_pipeline.errors import GenoPipelineError, WriterDiedError
from geno_pipeline.processes import die_with_parent

__all__ = ["ProcessWriter", "ThreadWriter", "Writer", "process_writer_available", "start_writer"]

P = TypeVar("P")
P_contra = TypeVar("P_contra", contravariant=True)
_LENGTH = struct.Struct("<Q")


class Writer(Protocol[P_contra]):
    """Runs `handler(payload)` for each submitted payload, one at a time, in order."""

    busy_seconds: float

    def submit(self, payload: P_contra) -> None:
        """Run the handler on `payload` once the previous job has finished (whose error, if any, is raised here)."""

    def wait(self) -> None:
        """Block until the job in flight has finished; raise its error."""

    def close(self) -> None:
        """Wait for the job in flight (raising its error) and stop."""

    def abandon(self) -> None:
        """Stop after the job in flight has finished and cleaned up after itself, dropping its error: for when the
        training thread is already raising one of its own."""


class ThreadWriter(Generic[P]):
    """Run the handler on a worker thread, one payload at a time, in submission order."""

    def __init__(self, handler: Callable[[P], None], name: str = "writer") -> None:
        self._handler = handler
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None
        self.busy_seconds = 0.0
        """Wall seconds jobs have run on the worker (written by the worker only; read it after `wait` or `close`)."""

    def _timed(self, payload: P) -> None:
        t0 = time.perf_counter()
        try:
            self._handler(payload)
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def submit(self, payload: P) -> None:
        self.wait()
        self._pending = self._pool.submit(self._timed, payload)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()  # waits; the job's own cleanup (a removed staging directory) has run by then
        self._pool.shutdown(wait=True)


def _widen(fd: int) -> None:
    """Let pipe `fd` hold up to 1 MiB (Linux), so that a checkpoint of that size is handed over without waiting for the
    child to read it; the default (64 KiB) is kept where that is refused."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes | None:
    """One frame, or None at end of file (the other side closed its end or died)."""
    head = _read_exact(fd, _LENGTH.size)
    return None if head is None else _read_exact(fd, _LENGTH.unpack(head)[0])


def _portable(exc: BaseException, name: str) -> BaseException:
    """`exc` as it can travel back to the parent: itself when it pickles and unpickles to the same message, else a
    `RuntimeError` naming it; unexpected errors carry the traceback of writer process `name` as a note."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
        same = type(copy) is type(exc) and str(copy) == str(exc)
    except Exception:
        same = False
    out = exc if same else RuntimeError(f"{type(exc).__name__}: {exc}")
    if not isinstance(exc, (OSError, GenoPipelineError)):  # a bug: keep where it happened
        out.add_note(f"in the {name} writer process:\n" + "".join(traceback.format_exception(exc)).rstrip())
    return out


def _serve(handler: Callable[[P], None], jobs: int, results: int, name: str) -> None:
    """The child's loop: read a payload, run the handler, send back (seconds, error or None); stop at end of file."""
    while (frame := _read_frame(jobs)) is not None:
        t0 = time.perf_counter()
        error: BaseException | None = None
        try:
            handler(pickle.loads(frame))
        except BaseException as exc:
            error = _portable(exc, name)
        _write_frame(results, pickle.dumps((time.perf_counter() - t0, error)))


class ProcessWriter(Generic[P]):
    """Run the handler in a forked child process, one payload at a time, in submission order (see the module)."""

    def __init__(self, handler: Callable[[P], None], name: str = "writer") -> None:
        self.name = name
        self.busy_seconds = 0.0
        """Wall seconds jobs have run in the child (as it reported them)."""
        opened: list[int] = []
        try:  # no pipe or process to be had (EMFILE, EAGAIN, ENOMEM): raise, leaving nothing open
            opened.extend(os.pipe())
            opened.extend(os.pipe())
            jobs_r, jobs_w, results_r, results_w = opened
            _widen(jobs_w)
            parent = os.getpid()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            pid = os.fork()
        except OSError:
            for fd in opened:
                os.close(fd)
            raise
        if pid == 0:  # the child: serve jobs, then leave without running anything of the parent's (os._exit)
            code = 1
            try:
                os.close(jobs_w)
                os.close(results_r)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent waits for the job in flight
                if die_with_parent(parent) is not False:
                    _serve(handler, jobs_r, results_w, name)
                    code = 0
            finally:
                os._exit(code)
        os.close(jobs_r)
        os.close(results_w)
        self.pid = pid
        self._jobs: int | None = jobs_w
        self._results: int | None = results_r
        self._pending = False
        self._status = "still running"

    def _gone(self) -> WriterDiedError:
        """The error for a child that died without answering (killed, out of memory): exit 4, training stopped early,
        never exit 2's "invalid input"."""
        self._stop()
        return WriterDiedError(
            f"the {self.name} writer process (pid {self.pid}) died without finishing its job ({self._status}); the "
            "checkpoint it was writing is not on disk; fix: see the system log (out of memory?), then resume with "
            "`geno-pipeline train --resume auto`"
        )

    def _stop(self) -> None:
        """Close our ends of the pipes (the child exits at end of file) and reap the child."""
        for fd in (self._jobs, self._results):
            if fd is not None:
                os.close(fd)
        self._jobs = self._results = None
        if self._status == "still running":
            _, status = os.waitpid(self.pid, 0)
            self._status = (
                f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.waitstatus_to_exitcode(status)}"
            )

    def submit(self, payload: P) -> None:
        self.wait()
        if self._jobs is None:
            raise RuntimeError(f"the {self.name} writer is closed")
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_frame(self._jobs, data)
        except BrokenPipeError:
            raise self._gone() from None
        self._pending = True

    def wait(self) -> None:
        if not self._pending or self._results is None:
            return
        self._pending = False
        frame = _read_frame(self._results)
        if frame is None:
            raise self._gone()
        seconds, error = pickle.loads(frame)
        self.busy_seconds += seconds
        if error is not None:
            raise error

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._stop()

    def abandon(self) -> None:
        try:
            self.wait()
        except BaseException:
            pass
        finally:
            self._stop()


def process_writer_available() -> bool:
    """Whether `start_writer` forks a writer process here: on Linux (elsewhere fork is unsafe beside torch's threads,
    or missing)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def start_writer(handler: Callable[[P], None], name: str, *, process: bool | None = None) -> Writer[P]:
    """A `ProcessWriter` where available (or `process`), else a `ThreadWriter`; also a `ThreadWriter`, with a warning
    on stderr, when the system refuses the fork (process limit, memory): it writes the same bytes, more slowly."""
    if process if process is not None else process_writer_available():
        try:
            return ProcessWriter(handler, name)
        except OSError as exc:
            print(f"train: could not start the {name} writer process ({exc}); writing {name}s on a thread instead", file=sys.stderr)
    return ThreadWriter(handler, name)

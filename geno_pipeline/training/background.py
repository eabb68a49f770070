"""One background thread that runs write jobs in order while training goes on (checkpoints: see `TrainingRun.checkpoint`).

At most one job is in flight: `submit` waits for the previous one first, so jobs finish in the order they were
submitted and a slow disk holds training back instead of piling up snapshots in memory. A job's error is raised in
the training thread at the next `submit` or `wait`.

What the thread saves is the time a job waits on the disk (fsync), when the GIL is released. The rest of a job (its
Python: serializing, validating, hashing) holds the GIL, and each time the job gets the GIL back after a system call
it waits for the training thread to let go of it. So a job slows the training thread's own steps while it runs. On
the CPU tiny profile (a checkpoint every 4 steps of a ~5 ms step) a run took from 0.79 to 1.22 times as long as with
the same jobs run on the training thread (12 alternate pairs in two sessions; README, Performance): there the thread
saves little. `busy_seconds` counts how long jobs ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Run jobs one at a time on a worker thread, in submission order; errors come back to the caller."""

    def __init__(self, name: str = "writer") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None
        self.busy_seconds = 0.0
        """Wall seconds jobs have run on the worker (written by the worker only; read it after `wait` or `close`)."""

    def _timed(self, job: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            job()
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on the worker once the previous job has finished (whose error, if any, is raised here instead)."""
        self.wait()
        self._pending = self._pool.submit(self._timed, job)

    def wait(self) -> None:
        """Block until the job in flight has finished; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the job in flight (raising its error) and stop the worker."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Stop after the job in flight has finished and cleaned up after itself, dropping its error: for when the
        training thread is already raising one of its own."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()  # waits; the job's own cleanup (a removed staging directory) has run by then
        self._pool.shutdown(wait=True)

"""The loop's input: each step's batch drawn by the sampler and encoded by the frozen encoder, on the training thread
(`InlineInput`) or ahead of it on a worker thread (`PrefetchInput`).

Both prepare the steps in order with the one `prepare` function, so the sampler's random stream is consumed in the
same order and each step gets the same batch, bit for bit (the encoder's kernels run with the same thread count
on either thread). A prepared step carries the sampler's state right after its own draw: a checkpoint at that step
records it, not the live sampler's, which is ahead by the batches already queued, so a run resumed from it draws
the same next batches as the straight run.

The worker overlaps the next steps' sampling and encoding with this step's optimizer work where a core is free for it
(`prefetch_default`): the numpy and torch kernels release the GIL, the sampler's Python does not. What the training
thread still waits for is the loop's `input_wait` part, the figure that matters when the step itself is fast (a GPU).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from geno_pipeline.training.trainer import TorchTrainerBatch

__all__ = ["PREFETCH_DEPTH", "InlineInput", "PrefetchInput", "Prepared", "StepInput", "prefetch_default"]

PREFETCH_DEPTH = 2  # steps prepared ahead: one to hide a slow draw behind, one being drawn


@dataclass(frozen=True)
class Prepared:
    """One step's input, ready for `train_step`."""

    step: int
    shards: list[TorchTrainerBatch]  # this rank's micro-batches
    action_count: int  # real rollout steps in the global batch
    sampler_state: dict[str, Any]  # the sampler's state right after this step's draw
    sampling_seconds: float
    encoding_seconds: float


class StepInput:
    """Where the loop takes each step's input from; `sampling_seconds` and `encoding_seconds` sum the preparation of the
    steps handed out, on whichever thread it ran."""

    sampling_seconds: float = 0.0
    encoding_seconds: float = 0.0

    def get(self, step: int) -> Prepared:
        raise NotImplementedError

    def close(self) -> None:
        """Stop preparing (batches already drawn are dropped)."""

    def _count(self, item: Prepared) -> None:
        self.sampling_seconds += item.sampling_seconds
        self.encoding_seconds += item.encoding_seconds


class InlineInput(StepInput):
    """Prepare each step on the training thread when it is asked for."""

    def __init__(self, prepare: Callable[[int], Prepared]) -> None:
        self._prepare = prepare

    def get(self, step: int) -> Prepared:
        item = self._prepare(step)
        self._count(item)
        return item


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class PrefetchInput(StepInput):
    """A worker thread prepares steps `first .. last` in order, at most `depth` ahead of the training thread.

    `start` it after the object is held where `close` will be called: an interrupt (SIGTERM, Ctrl-C) can land while
    the thread starts, and a worker left running in a torch kernel when the interpreter exits aborts the process
    ("terminate called without an active exception") instead of letting it exit with its code."""

    def __init__(self, prepare: Callable[[int], Prepared], first: int, last: int, *, depth: int = PREFETCH_DEPTH) -> None:
        self._prepare = prepare
        self._queue: queue.Queue[Prepared | _Failed] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(first, last), name="geno-pipeline-prefetch", daemon=True)

    def start(self) -> PrefetchInput:
        self._thread.start()
        return self

    def _put(self, item: Prepared | _Failed) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, first: int, last: int) -> None:
        try:
            for step in range(first, last + 1):
                if self._stop.is_set() or not self._put(self._prepare(step)):
                    return
        except BaseException as exc:  # handed to the training thread, which raises it at the step it belongs to
            self._put(_Failed(exc))

    def get(self, step: int) -> Prepared:
        while True:
            try:
                item = self._queue.get(timeout=0.05)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"the prefetch thread stopped before step {step}") from None
        if isinstance(item, _Failed):
            raise item.error
        if item.step != step:
            raise RuntimeError(f"the prefetch thread prepared step {item.step}, the loop is at step {step}")
        self._count(item)
        return item

    def close(self) -> None:
        """Stop the worker and wait for it: it checks the stop before each step (one not yet running its loop returns
        at once) and within 50 ms while it waits to queue one; a step being prepared is finished, then dropped. A
        second interrupt during the wait is raised once the worker has ended."""
        self._stop.set()
        interrupted: BaseException | None = None
        while self._thread.is_alive():  # False until the thread has started its run, which then sees the stop
            try:
                self._thread.join()
            except BaseException as exc:  # the worker must end before this thread lets the process exit
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted


def prefetch_default(device: str, threads_per_worker: int, workers_here: int, cores: int) -> bool:
    """Prefetch when it has a core of its own: on CUDA (the step runs on the GPU), or when this node's workers leave a
    CPU core free (`workers_here x threads_per_worker < cores`)."""
    return device.startswith("cuda") or workers_here * threads_per_worker < cores

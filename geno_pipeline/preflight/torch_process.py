"""The preflight side of the torch probe process (`geno_pipeline.torchprobe`): start it first, let it touch CUDA once
NVML has looked, and collect its answers under time bounds.

A bound that passes kills the process: the import of torch gets `IMPORT_TIMEOUT_S`; starting CUDA, and then each
kernel smoke test, get `preflight.cuda_timeout_s` each. Tests inject a `TorchProcessFn` returning fixed facts, or run
this class with another command.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from geno_pipeline.devices import selected_cuda_ordinals
from geno_pipeline.preflight.documents import KernelSmoke, TorchCudaProbe
from geno_pipeline.torchprobe import KERNEL_SEED, KERNEL_SIZE, kernel_tolerance, not_finite

__all__ = [
    "IMPORT_TIMEOUT_S",
    "TorchDeterminismFlags",
    "TorchProbePlan",
    "TorchProbeProcess",
    "TorchProcess",
    "TorchProcessFacts",
    "TorchProcessFn",
    "cuda_unavailable",
]

IMPORT_TIMEOUT_S = 120.0
_KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class TorchProbePlan:
    """What the probe process needs to know about the job."""

    requested_device: str
    nproc_per_node: int
    deterministic: bool
    cuda_timeout_s: float
    import_timeout_s: float = IMPORT_TIMEOUT_S

    def argument(self) -> str:
        """The JSON argument of `python -m geno_pipeline.torchprobe`."""
        return json.dumps(
            {"requested_device": self.requested_device, "nproc_per_node": self.nproc_per_node, "deterministic": self.deterministic}
        )


@dataclass(frozen=True)
class TorchDeterminismFlags:
    """The determinism settings as torch reported them after the trainer's settings were applied."""

    deterministic_algorithms: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    tf32_matmul: bool
    tf32_cudnn: bool
    cuda_initialized_before: bool
    cpu_class: str  # `<vendor>/<instruction set>` (torchflags.cpu_kernel_class)
    tf32_cublas_override: bool = False  # TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 in the probe process's environment


@dataclass(frozen=True)
class TorchProcessFacts:
    """Everything the probe process reported; `failure` says where and why it stopped early."""

    imported: bool
    import_error: str | None
    version: str | None
    import_ms: float
    cuda: TorchCudaProbe | None = None
    determinism: TorchDeterminismFlags | None = None
    kernels: list[KernelSmoke] = field(default_factory=list)
    failure: str | None = None


class TorchProcess(Protocol):
    """A started probe: `release_cuda()` once NVML has looked, `facts()` to collect (waits), `close()` always."""

    def release_cuda(self) -> None: ...

    def facts(self) -> TorchProcessFacts: ...

    def close(self) -> None: ...


TorchProcessFn = Callable[[TorchProbePlan], TorchProcess]


def cuda_unavailable(torch_version: str | None, error: str | None) -> TorchCudaProbe:
    """torch's CUDA facts when the probe process never reported them: unavailable, with the reason."""
    return TorchCudaProbe(
        torch_version=torch_version, cuda_available=False, device_count=0, cuda_version=None, cudnn_version=None,
        cuda_initialized_before_probe=False, devices=[], error=error,
    )  # fmt: skip


def _kernel(ordinal: int, plan: TorchProbePlan, raw: dict[str, Any] | None, error: BaseException | None = None) -> KernelSmoke:
    if raw is None:  # it never answered for this device
        outcome = "timeout" if isinstance(error, TimeoutError) else "failed"
        return KernelSmoke(
            ordinal=ordinal, outcome=outcome, size=KERNEL_SIZE, seed=KERNEL_SEED, max_rel_error=None,
            tolerance=kernel_tolerance(not plan.deterministic), repeat_identical=None, duration_ms=None, timeout_s=plan.cuda_timeout_s,
            error=str(error),
        )  # fmt: skip
    outcome, relative, reason = raw["outcome"], raw["max_rel_error"], raw["error"]
    if relative is not None and not math.isfinite(relative):  # JSON-safe: null and the reason, never NaN
        reason = not_finite(relative)
        outcome, relative = "mismatch", None
    return KernelSmoke(
        ordinal=ordinal, outcome=outcome, size=raw["size"], seed=raw["seed"], max_rel_error=relative, tolerance=raw["tolerance"],
        repeat_identical=raw["repeat_identical"], duration_ms=raw["duration_ms"], timeout_s=plan.cuda_timeout_s, error=reason,
    )  # fmt: skip


class TorchProbeProcess:
    """The real probe: `python -m geno_pipeline.torchprobe PLAN` (or `command + [PLAN]`), started on construction."""

    def __init__(self, plan: TorchProbePlan, command: Sequence[str] | None = None) -> None:
        self.plan = plan
        argv = [*(command or (sys.executable, "-m", "geno_pipeline.torchprobe")), plan.argument()]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[tuple[float, dict[str, Any] | None]] = queue.Queue()
        self.stderr_tail = ""
        self.last = self.started  # arrival time of the latest answer
        self._released: float | None = None
        self._facts: TorchProcessFacts | None = None
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True), threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put((time.monotonic(), json.loads(line)))
            except json.JSONDecodeError:
                continue  # not ours (a library printing to stdout)
        self.proc.stdout.close()
        self.lines.put((time.monotonic(), None))  # end of output: the process exited

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + line)[-2000:]
        self.proc.stderr.close()

    def release_cuda(self) -> None:
        """Let the process create CUDA contexts (NVML has listed the processes on each GPU)."""
        if self._released is not None:
            return
        self._released = time.monotonic()
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # a broken pipe: it already exited, and facts() says why
            self.proc.stdin.write("go\n")
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def _next(self, event: str, since: float, bound: float, phase: str) -> dict[str, Any]:
        """The next `event` line; raises TimeoutError or EOFError with a message naming the phase."""
        while True:
            try:
                at, message = self.lines.get(timeout=max(0.0, since + bound - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no answer within {bound:g} s while {phase}") from None
            if message is None:
                code = self.proc.wait()
                self._readers[1].join(timeout=_KILL_WAIT_S)  # the last error line may still be in the pipe
                tail = self.stderr_tail.strip().splitlines()[-1:] or ["no error output"]
                raise EOFError(f"the torch probe process exited with code {code} while {phase}: {tail[0]}")
            if message.get("event") == event:
                self.last = at
                return message

    def facts(self) -> TorchProcessFacts:
        """Wait for the answers (releasing CUDA if not done yet); never raises for the process's failures."""
        if self._facts is None:
            try:
                self._facts = self._collect()
            finally:
                self.close()
        return self._facts

    def _collect(self) -> TorchProcessFacts:
        plan = self.plan
        try:
            imported = self._next("imported", self.started, plan.import_timeout_s, "importing torch")
        except (TimeoutError, EOFError) as exc:
            return TorchProcessFacts(imported=False, import_error=f"import failed: {exc}", version=None, import_ms=0.0, failure=str(exc))
        base = TorchProcessFacts(imported=bool(imported["ok"]), import_error=imported["error"], version=imported["version"],
                                 import_ms=float(imported["duration_ms"]))  # fmt: skip
        if not imported["ok"]:
            return base
        self.release_cuda()
        assert self._released is not None
        try:
            cuda = self._next("cuda", max(self._released, self.last), plan.cuda_timeout_s, "starting CUDA")
        except (TimeoutError, EOFError) as exc:
            return self._cuda_failure(base, exc)
        facts = TorchCudaProbe(**cuda["cuda"], cuda_initialized_before_probe=bool(cuda["determinism"]["cuda_initialized_before"]))
        flags = TorchDeterminismFlags(**cuda["determinism"])
        kernels: list[KernelSmoke] = []
        for ordinal in cuda["ordinals"]:
            try:
                raw = self._next("kernel", self.last, plan.cuda_timeout_s, f"running the kernel smoke test on cuda:{ordinal}")
            except (TimeoutError, EOFError) as exc:
                kernels += [_kernel(o, plan, None, exc) for o in cuda["ordinals"][len(kernels) :]]
                return replace(base, cuda=facts, determinism=flags, kernels=kernels, failure=str(exc))
            kernels.append(_kernel(int(raw["ordinal"]), plan, raw))
        return replace(base, cuda=facts, determinism=flags, kernels=kernels)

    def _cuda_failure(self, base: TorchProcessFacts, error: BaseException) -> TorchProcessFacts:
        """Starting CUDA hung or crashed: torch counts as unable to use CUDA; the devices the job asked for get the failure."""
        cuda = cuda_unavailable(base.version, str(error))
        asked = selected_cuda_ordinals(self.plan.requested_device, cuda_usable=True, nproc_per_node=self.plan.nproc_per_node)
        asked = asked if self.plan.requested_device != "cpu" else []
        kernels = [_kernel(o, self.plan, None, error) for o in asked]
        return replace(base, cuda=cuda, kernels=kernels, failure=str(error))

    def close(self) -> None:
        """Kill the process if it still runs (a kernel may hang in the driver: wait a bounded time only)."""
        self.release_cuda()
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=_KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            return  # stuck in the driver: the readers end when it does
        for reader in self._readers:
            reader.join(timeout=_KILL_WAIT_S)

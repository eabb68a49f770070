"""Distributed checks (a job of more than one worker): backend, devices per worker, rendezvous port, loopback smoke test.

`runtime.nproc_per_node` here is this node's workers (the preflight runner sets it from LOCAL_WORLD_SIZE or the
launcher's WORLD_SIZE when a launcher runs the job)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from geno_pipeline.config import RuntimeParams
from geno_pipeline.distributed import planned_world_size, port_is_free, rendezvous_port, resolve_backend
from geno_pipeline.preflight.checks.base import Finding, passed, problem, skipped
from geno_pipeline.preflight.documents import AcceleratorProbe, DistributedProbe, SmokeTest

__all__ = ["SMOKE_TIMEOUT_S", "DistributedCheck", "DistributedProbeFn", "port_is_free", "probe_distributed"]

SMOKE_TIMEOUT_S = 60.0
DistributedProbeFn = Callable[[RuntimeParams, AcceleratorProbe], DistributedProbe]


def _backend_available(backend: str) -> bool:
    import torch.distributed as dist

    if not dist.is_available():
        return False
    return bool(dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available())


def probe_distributed(runtime: RuntimeParams, accelerator: AcceleratorProbe) -> DistributedProbe:
    """Ask torch for the backend, count devices, try the port and run the bounded smoke test."""
    from geno_pipeline.distributed.smoke import run_smoke_test

    device = "cuda" if accelerator.resolved_device.startswith("cuda") else "cpu"
    backend = resolve_backend(runtime.dist_backend, device)
    available = _backend_available(backend)
    external = "WORLD_SIZE" in os.environ  # torchrun or a scheduler: it picks the port (a free one with --standalone)
    port = None if external else rendezvous_port()
    timeout = SMOKE_TIMEOUT_S  # its own bound: two fresh interpreters importing torch can take longer than a short dist_timeout_s
    if available:
        result = run_smoke_test(backend, timeout_s=timeout)
        smoke = SmokeTest(ran=True, ok=result.ok, seconds=round(result.seconds, 3), timeout_s=timeout, error=result.error)
    else:
        smoke = SmokeTest(ran=False, ok=False, seconds=0.0, timeout_s=timeout, error=f"backend {backend} is not available")
    return DistributedProbe(
        world_size=planned_world_size(runtime.nproc_per_node),
        nproc_per_node=runtime.nproc_per_node,
        launcher=external,
        backend=backend,
        backend_available=available,
        device=device,
        devices_visible=accelerator.torch.device_count if device == "cuda" else 0,
        cpu_cores=os.cpu_count(),
        cpu_threads_per_worker=runtime.cpu_threads,
        port=port,
        port_free=None if port is None else port_is_free(port),
        smoke=smoke,
    )


def _fewer(facts: DistributedProbe) -> str:
    """How to run fewer workers on this node: the launcher's flag, or the param for a self-launched job."""
    if facts.launcher:
        return "launch fewer workers per node (torchrun --nproc_per_node; for a job across nodes set LOCAL_WORLD_SIZE for preflight)"
    return "lower runtime.nproc_per_node"


@dataclass(frozen=True)
class DistributedCheck:
    """`distributed.*`: can this machine run runtime.nproc_per_node workers?"""

    runtime: RuntimeParams
    accelerator: AcceleratorProbe
    probe_fn: DistributedProbeFn | None = None
    name: str = "distributed"

    def probe(self) -> DistributedProbe:
        return (self.probe_fn or probe_distributed)(self.runtime, self.accelerator)

    def assess(self, facts: DistributedProbe) -> list[Finding]:
        return [self._backend(facts), self._devices(facts), self._port(facts), self._smoke(facts)]

    def _backend(self, facts: DistributedProbe) -> Finding:
        check = "distributed.backend"
        if facts.backend_available:
            return passed(check, f"{facts.backend} is available for {facts.world_size} workers")
        other = "gloo" if facts.backend == "nccl" else "nccl"
        why = "NCCL needs a CUDA build of torch and CUDA devices" if facts.backend == "nccl" else "this torch has no gloo"
        return problem(
            check, "error", "distributed.backend_unavailable", "runtime.dist_backend",
            f"{facts.backend} is not available in this torch build ({why})",
            f"set runtime.dist_backend: {other if facts.device == 'cpu' or facts.backend == 'gloo' else 'gloo'} or auto, or install a "
            "torch build with the backend",
        )  # fmt: skip

    def _devices(self, facts: DistributedProbe) -> Finding:
        check = "distributed.devices"
        if facts.device == "cuda":
            if facts.devices_visible < facts.nproc_per_node:
                return problem(
                    check, "error", "distributed.not_enough_devices", "runtime.nproc_per_node",
                    f"{facts.nproc_per_node} workers need one CUDA device each, {facts.devices_visible} visible",
                    _fewer(facts) + ", or make more GPUs visible (CUDA_VISIBLE_DEVICES)",
                )  # fmt: skip
            return passed(check, f"{facts.nproc_per_node} workers on {facts.devices_visible} visible CUDA devices")
        cores, need = facts.cpu_cores, facts.nproc_per_node * facts.cpu_threads_per_worker
        if cores is not None and need > cores:
            return problem(
                check, "warning", "distributed.cpu_oversubscribed", "runtime.cpu_threads",
                f"{facts.nproc_per_node} workers x {facts.cpu_threads_per_worker} threads = {need} threads on {cores} cores",
                f"lower runtime.cpu_threads, or {_fewer(facts)} (the bytes do not change with the world size)",
            )  # fmt: skip
        return passed(check, f"{facts.nproc_per_node} CPU worker(s) x {facts.cpu_threads_per_worker} thread(s) on {cores} cores")

    def _port(self, facts: DistributedProbe) -> Finding:
        check = "distributed.port"
        if facts.port is None:
            return skipped(check, "the launcher picks the rendezvous (WORLD_SIZE is set)")
        if not facts.port_free:
            return problem(
                check, "error", "distributed.port_in_use", "MASTER_PORT",
                f"rendezvous port 127.0.0.1:{facts.port} is in use",
                "stop what listens there, or set MASTER_PORT to a free port for both preflight and train",
            )  # fmt: skip
        return passed(check, f"rendezvous port 127.0.0.1:{facts.port} is free")

    def _smoke(self, facts: DistributedProbe) -> Finding:
        check, smoke = "distributed.smoke", facts.smoke
        if not smoke.ran:
            return skipped(check, f"not run: {smoke.error}")
        if not smoke.ok:
            return problem(
                check, "error", "distributed.smoke_failed", "runtime.dist_backend",
                f"two-process {facts.backend} all-reduce on 127.0.0.1 failed: {smoke.error}",
                "check the loopback interface and firewall, GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, and the backend's install",
            )  # fmt: skip
        return passed(check, f"two-process {facts.backend} all-reduce + all-gather on 127.0.0.1 ok in {smoke.seconds:.1f} s")

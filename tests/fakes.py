"""Fake machines for preflight tests, injected through the API: torch's CUDA facts and the torch probe process (the NVML
library is faked at the ctypes boundary under the real pynvml, in tests/nvml_lib.py). Nothing here is used by the
shipped code."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from geno_pipeline.preflight.checks.dependencies import DependencySpec
from geno_pipeline.preflight.documents import DependencyProbe, KernelSmoke, TorchCudaProbe, TorchDevice
from geno_pipeline.preflight.torch_process import TorchDeterminismFlags, TorchProbePlan, TorchProcessFacts
from tests.nvml_lib import FakeNvmlLib, GpuSpec, MigSpec

GIB = 1024**3

# variables that decide which GPUs a job sees and how; a test machine's own values must not leak into a fake machine
GPU_ENVIRONMENT = (
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "CUBLAS_WORKSPACE_CONFIG",
)  # fmt: skip


@contextlib.contextmanager
def gpu_environment(env: dict[str, str] | None = None) -> Iterator[None]:
    """os.environ without this machine's GPU variables, plus `env`, for the duration (restored after)."""
    with mock.patch.dict(os.environ):
        for key in GPU_ENVIRONMENT:
            os.environ.pop(key, None)
        os.environ.update(env or {})
        yield


def cuda_device(index: int, gpu: GpuSpec | MigSpec, parent: GpuSpec | None = None) -> TorchDevice:
    """What torch reports for a GPU (or a MIG device of `parent`) at CUDA ordinal `index`: CUDA's UUID has no prefix."""
    spec = parent or gpu
    assert isinstance(spec, GpuSpec)
    name = spec.name if parent is None else f"{spec.name} MIG"
    return TorchDevice(
        index=index, name=name, total_memory_bytes=gpu.total, capability=f"{spec.capability[0]}.{spec.capability[1]}",
        uuid=gpu.uuid.split("-", 1)[1], pci_bus_id=f"00000000:{spec.pci_bus:02X}:00",
    )  # fmt: skip


def cuda_devices(gpus: list[GpuSpec], order: list[int] | None = None) -> list[TorchDevice]:
    """The devices CUDA enumerates, in `order` (NVML indices; default NVML's order)."""
    return [cuda_device(i, gpus[n]) for i, n in enumerate(range(len(gpus)) if order is None else order)]


def fake_torch(
    devices: list[TorchDevice] | None = None,
    *,
    available: bool | None = None,
    cuda_version: str = "12.4",
    arch_list: list[str] | None = None,
) -> TorchCudaProbe:
    """torch's CUDA facts for a list of devices (none: a CPU build)."""
    devs = devices or []
    avail = bool(devs) if available is None else available
    return TorchCudaProbe(
        torch_version="2.13.0",
        cuda_available=avail,
        device_count=len(devs) if avail else 0,
        cuda_version=cuda_version if avail else None,
        cudnn_version=90100 if avail else None,
        arch_list=(arch_list if arch_list is not None else ["sm_80", "sm_86", "sm_90"]) if avail else [],
        cuda_initialized_before_probe=False,
        devices=devs if avail else [],
        error=None,
    )


FAKE_CPU_CLASS = "GenuineIntel/AVX2"
"""The CPU class the fakes report (vendor/instruction set): not the class of the machines that run the tests."""

DETERMINISTIC = TorchDeterminismFlags(
    deterministic_algorithms=True,
    deterministic_warn_only=False,
    cudnn_benchmark=False,
    cudnn_deterministic=True,
    tf32_matmul=False,
    tf32_cudnn=False,
    cuda_initialized_before=False,
    cpu_class=FAKE_CPU_CLASS,
)


def kernel(ordinal: int, outcome: str = "ok", *, error: float | None = 2.5e-7, identical: bool | None = True) -> KernelSmoke:
    """A kernel smoke result as the probe process reports it."""
    return KernelSmoke(
        ordinal=ordinal, outcome=outcome, size=256, seed=20240229, max_rel_error=error, tolerance=1e-4,  # type: ignore[arg-type]
        repeat_identical=identical, duration_ms=None if outcome == "timeout" else 12.0, timeout_s=60.0,
        error=None if outcome in ("ok", "mismatch", "nondeterministic") else f"{outcome} on cuda:{ordinal}",
    )  # fmt: skip


@dataclass
class FixedTorchProcess:
    """A torch probe process that answers fixed facts; records the plan and when CUDA was released."""

    cuda: TorchCudaProbe | None = None
    determinism: TorchDeterminismFlags | None = DETERMINISTIC
    kernels: list[KernelSmoke] = field(default_factory=list)
    imported: bool = True
    failure: str | None = None
    nvml: FakeNvmlLib | None = None  # when given, release_cuda records how many NVML C calls came before it
    plan: TorchProbePlan | None = None
    released_after_nvml_calls: int | None = None
    closed: bool = False

    def __call__(self, plan: TorchProbePlan) -> FixedTorchProcess:
        self.plan = plan
        return self

    def release_cuda(self) -> None:
        if self.released_after_nvml_calls is None:
            self.released_after_nvml_calls = len(self.nvml.calls) if self.nvml is not None else 0

    def facts(self) -> TorchProcessFacts:
        self.release_cuda()
        return TorchProcessFacts(
            imported=self.imported, import_error=None if self.imported else "import failed: ImportError: libtorch_cpu.so",
            version="2.13.0", import_ms=900.0, cuda=self.cuda if self.imported else None,
            determinism=self.determinism if self.imported else None, kernels=self.kernels, failure=self.failure,
        )  # fmt: skip

    def close(self) -> None:
        self.closed = True


def ok_dependency(spec: DependencySpec) -> DependencyProbe:
    return DependencyProbe(
        import_name=spec.import_name,
        package=spec.package,
        required=spec.required,
        available=True,
        version="99.0",
        minimum_version=spec.minimum_version,
        version_ok=True,
        reason="ok",
        duration_ms=0.0,
    )


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _holds_a_file_in(entry: Path, root: Path) -> bool:
    """Whether process /proc/PID has a file under `root` open: an exiting process has lost its command line (its memory
    goes first) but still holds its files, the workspace lock among them, until the kernel closes them."""
    try:
        return any(os.readlink(fd).startswith(f"{root}/") for fd in (entry / "fd").iterdir())
    except OSError:
        return False


def processes_of(root: Path) -> list[int]:
    """Live processes working on project `root`: its path on their command line or as their working directory (a
    forked child keeps both of its parent's), or a file of it open."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (str(root) in cmdline or cwd == str(root) or _holds_a_file_in(entry, root)) and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found

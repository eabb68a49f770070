"""GPU nodes as they really are, through the real pynvml over a fake NVML library (tests/nvml_lib.py): the node
scenarios, and one test per way the real NVML, CUDA and torch semantics differ from what the GPU path once assumed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from geno_pipeline.config import LoadedParams
from geno_pipeline.devices import worker_device
from geno_pipeline.environment import torch_training_device
from geno_pipeline.errors import TrainingError
from geno_pipeline.jsonio import validate_document
from geno_pipeline.layout import Layout
from geno_pipeline.preflight import stage as preflight_stage
from geno_pipeline.preflight.checks.accelerator import map_visible_devices
from geno_pipeline.preflight.checks.cuda import driver_compatibility
from geno_pipeline.preflight.nvml import probe_nvml
from geno_pipeline.preflight.torch_process import TorchProbePlan, TorchProbeProcess
from geno_pipeline.torchprobe import torch_cuda_facts
from tests.conftest import REPO, write_params
from tests.fakes import DETERMINISTIC, cuda_device, cuda_devices, gpu_environment
from tests.nvml_lib import (
    GPU_IS_LOST,
    INSUFFICIENT_POWER,
    IRQ_ISSUE,
    LIBRARY_NOT_FOUND,
    NO_PERMISSION,
    R525_MISSING,
    UNKNOWN,
    Driver,
    FakeNvmlLib,
    GpuSpec,
    MigSpec,
)
from tests.test_gpu_preflight import GPU_CHECKS, issues, rows, run

GIB = 1024**3
U = [f"GPU-{c * 8}-{c * 4}-{c * 4}-{c * 4}-{c * 12}" for c in "abcdef"]
MIG_UUIDS = [f"MIG-{c * 8}-1111-2222-3333-{c * 12}" for c in "0123"]


def h100(i: int = 0, **kw: Any) -> GpuSpec:
    """An H100 SXM: ECC on, row remapping (no page retirement on Hopper), MIG capable but off."""
    return GpuSpec(U[i], "NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB, pci_bus=0x18 + 0x10 * i, **kw)


def a100(i: int = 0, **kw: Any) -> GpuSpec:
    return GpuSpec(U[i], "NVIDIA A100-SXM4-80GB", 80 * GIB, 79 * GIB, pci_bus=0x18 + 0x10 * i, capability=(8, 0), **kw)


def v100(i: int = 0, **kw: Any) -> GpuSpec:
    """A V100: ECC on, page retirement, no row remapping, no MIG."""
    volta: dict[str, Any] = {"capability": (7, 0), "retired_pending": 0, "remap": None, "mig": None}
    return GpuSpec(U[i], "Tesla V100-SXM2-32GB", 32 * GIB, 31 * GIB, pci_bus=0x18 + 0x10 * i, **(volta | kw))


def rtx4090(i: int = 0, **kw: Any) -> GpuSpec:
    """A consumer GPU: no ECC, no page retirement, no row remapping, no MIG."""
    return GpuSpec(U[i], "NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB, pci_bus=0x01 + i, capability=(8, 9), ecc_mode=None, remap=None,
                   mig=None, **kw)  # fmt: skip


def mig_a100(i: int = 0) -> GpuSpec:
    migs = [MigSpec(MIG_UUIDS[0], 1, 0, 40 * GIB, 39 * GIB), MigSpec(MIG_UUIDS[1], 2, 0, 40 * GIB, 2 * GIB)]
    return a100(i, mig=True, mig_devices=migs)


@pytest.fixture()
def root(tiny_dataset: Path) -> Path:
    write_params(tiny_dataset, runtime={"device": "auto"})
    return tiny_dataset


# ---------------------------------------------------------------- the node scenarios

# name -> (GPUs, driver, environment, CUDA's devices (None: every GPU in NVML order), runtime.device)
SCENARIOS: dict[str, tuple[list[GpuSpec], Driver, dict[str, str], list[Any] | str | None, str]] = {
    "healthy H100 SXM": ([h100()], Driver(), {}, None, "auto"),
    "A100, row remap pending": ([a100(remap=(0, 2, 1, 0))], Driver(), {}, None, "auto"),
    "V100, retired pages pending": ([v100(retired_pending=1)], Driver(cuda=12020, version="535.104.05"), {}, None, "auto"),
    "RTX 4090 (no ECC)": ([rtx4090()], Driver(), {}, None, "auto"),
    "R525 driver (no clocks-event symbol)": ([a100(clock_reasons=0x20)], Driver(version="525.60.13", cuda=12000, missing=R525_MISSING),
                                             {}, None, "auto"),
    # CUDA enumerates one MIG device per process (the first, when CUDA_VISIBLE_DEVICES is unset), never the GPU itself
    "MIG on, CUDA_VISIBLE_DEVICES unset": ([mig_a100()], Driver(), {}, [cuda_device(0, mig_a100().mig_devices[0], mig_a100())], "auto"),
    "MIG on, CUDA_VISIBLE_DEVICES=MIG-<uuid>": ([mig_a100()], Driver(), {"CUDA_VISIBLE_DEVICES": MIG_UUIDS[0]},
                                                [cuda_device(0, mig_a100().mig_devices[0], mig_a100())], "auto"),
    "handle NO_PERMISSION": ([h100(handle_error=NO_PERMISSION)], Driver(), {},
                             [cuda_device(0, h100()).model_copy(update={"free_memory_bytes": 78 * GIB})], "auto"),
    "GPU_IS_LOST": ([h100(errors=dict.fromkeys(("nvmlDeviceGetEccMode", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows",
                                                "nvmlDeviceGetComputeRunningProcesses_v3"), GPU_IS_LOST))], Driver(), {}, None, "auto"),
    "no libcuda.so.1": ([h100()], Driver(cuda_error=LIBRARY_NOT_FOUND), {}, None, "auto"),
    "NVML order differs from CUDA's": ([h100(0), h100(1, ecc_volatile_uncorrected=3)], Driver(), {}, "swap", "auto"),
}  # fmt: skip

# the rows each scenario must show (rows not named must pass, or skip where NVML says "not supported"), and its issue codes
EXPECTED: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "healthy H100 SXM": ({"gpu.retired_pages": "skip"}, {}),
    "A100, row remap pending": ({"gpu.retired_pages": "skip", "gpu.row_remap": "fail"}, {"gpu.row_remap_pending": "error"}),
    "V100, retired pages pending": ({"gpu.row_remap": "skip", "gpu.retired_pages": "fail", "cuda.driver": "warn"},
                                    {"gpu.retired_pages_pending": "error", "cuda.driver_minor_older": "warning"}),
    "RTX 4090 (no ECC)": ({"gpu.ecc": "skip", "gpu.retired_pages": "skip", "gpu.row_remap": "skip"}, {}),
    "R525 driver (no clocks-event symbol)": ({"gpu.retired_pages": "skip", "gpu.clocks": "warn", "cuda.driver": "warn"},
                                             {"gpu.clocks_throttled": "warning", "cuda.driver_minor_older": "warning"}),
    "MIG on, CUDA_VISIBLE_DEVICES unset": ({"gpu.retired_pages": "skip"}, {}),
    "MIG on, CUDA_VISIBLE_DEVICES=MIG-<uuid>": ({"gpu.retired_pages": "skip"}, {}),
    "handle NO_PERMISSION": ({row: "warn" for row in GPU_CHECKS[:7]}, {"gpu.unreadable": "warning"}),  # free: torch's reading
    "GPU_IS_LOST": ({row: "fail" for row in GPU_CHECKS[:7]}, {"gpu.lost": "error"}),  # a lost GPU fails every row
    "no libcuda.so.1": ({"nvml": "warn", "gpu.retired_pages": "skip", "cuda.driver": "skip"}, {"nvml.query_failed": "warning"}),
    "NVML order differs from CUDA's": ({"gpu.retired_pages": "skip", "gpu.ecc": "fail"}, {"gpu.ecc_uncorrectable": "error"}),
}  # fmt: skip


def scenario_report(root: Path, name: str) -> Any:
    gpus, driver, env, devices, device = SCENARIOS[name]
    write_params(root, runtime={"device": device})
    torch_devices = cuda_devices(gpus, [1, 0]) if isinstance(devices, str) else devices  # "swap": CUDA's order is NVML's reversed
    arch_list = ["sm_70", "sm_80", "sm_86", "sm_89", "sm_90"]  # a build with Volta kernels (cu126)
    return run(root, gpus, driver=driver, env=env, torch_devices=torch_devices, arch_list=arch_list)[0]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_gpu_node_scenarios(root: Path, name: str) -> None:
    report = scenario_report(root, name)
    statuses = rows(report)
    expected_rows, expected_issues = EXPECTED[name]
    for row in ["nvml", "torch_cuda", "accelerator", *GPU_CHECKS]:
        assert statuses[row][0] == expected_rows.get(row, "pass"), (row, statuses[row], next(c.message for c in report.checks
                                                                                               if c.name == row))  # fmt: skip
    assert issues(report) == expected_issues


def test_scenario_nvml_order_judges_the_gpu_cuda_uses(root: Path) -> None:
    """cuda:0 is NVML index 1 (CUDA orders fastest first): the ECC errors of NVML index 0's twin are not blamed on it, and
    with the order swapped the sick GPU is cuda:0."""
    gpus = [h100(0), h100(1, ecc_volatile_uncorrected=3)]
    report, _ = run(root, gpus, torch_devices=cuda_devices(gpus, [1, 0]))
    assert [(v.ordinal, v.nvml_index, v.mapped_by) for v in report.accelerator.visible] == [(0, 1, "uuid"), (1, 0, "uuid")]
    assert issues(report) == {"gpu.ecc_uncorrectable": "error"}
    assert next(i.path for i in report.issues) == f"cuda:0 (NVIDIA H100 80GB HBM3, {U[1]})"


# ---------------------------------------------------------------- 1. a GPU that computes NaN


NAN_CHILD = """
import json, sys
def say(event, **f):
    print(json.dumps({"event": event, **f}), flush=True)
say("imported", ok=True, error=None, version="2.13.0", duration_ms=5.0)
sys.stdin.readline()
cuda = {"torch_version": "2.13.0", "cuda_available": True, "device_count": 1, "cuda_version": "12.4", "cudnn_version": 1,
        "arch_list": ["sm_90"], "error": None, "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3",
        "total_memory_bytes": 85899345920, "capability": "9.0", "uuid": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa", "pci_bus_id": None}]}
flags = {"deterministic_algorithms": True, "deterministic_warn_only": False, "cudnn_benchmark": False,
         "cudnn_deterministic": True, "tf32_matmul": False, "tf32_cudnn": False, "cuda_initialized_before": False,
         "cpu_class": "GenuineIntel/AVX2"}
say("cuda", cuda=cuda, determinism=flags, ordinals=[0])
say("kernel", ordinal=0, device="cuda:0", seed=1, size=256, tolerance=1e-4, outcome="mismatch", max_rel_error=float("nan"),
    repeat_identical=False, duration_ms=3.0, error=None)
say("done")
"""


def test_a_gpu_computing_nan_fails_preflight_with_the_report_on_disk(root: Path, tmp_path: Path) -> None:
    """The real probe process protocol, from a child that reports what a GPU computing NaN makes the probe send (json
    writes NaN): the report keeps null plus the reason, preflight fails with cuda.kernel_mismatch (exit 3), and the
    report is on disk."""
    write_params(root, runtime={"device": "cuda"})
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(NAN_CHILD))
    lib = FakeNvmlLib([h100()])
    with lib.installed(), gpu_environment():
        result = preflight_stage.run(LoadedParams.read(root / "params.yaml"), Layout.for_root(root),
                                     torch_process=lambda plan: TorchProbeProcess(plan, command=[sys.executable, str(script)]))  # fmt: skip
    on_disk = json.loads((root / "reports" / "preflight.json").read_text())
    validate_document(on_disk, "preflight_report")
    assert on_disk["ok"] is False and on_disk["kernel_smoke"][0]["max_rel_error"] is None
    assert on_disk["kernel_smoke"][0]["error"] == "the result is not finite: max rel. error nan"
    assert [(i["code"], i["severity"]) for i in on_disk["issues"]] == [("cuda.kernel_mismatch", "error")]
    from geno_pipeline.cli import STATUS_EXIT, _preflight_command

    assert STATUS_EXIT[_preflight_command().status(result.document)] == 3


def test_the_probe_process_line_with_nan_arrives_as_null_and_a_reason(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(NAN_CHILD))
    facts = TorchProbeProcess(TorchProbePlan("cuda", 1, True, 5.0), command=[sys.executable, str(script)]).facts()
    (k,) = facts.kernels
    assert (k.outcome, k.max_rel_error) == ("mismatch", None) and k.error == "the result is not finite: max rel. error nan"
    json.loads(k.model_dump_json())  # serialisable


# ---------------------------------------------------------------- 2. a GPU NVML cannot open


@pytest.mark.parametrize("code", [NO_PERMISSION, INSUFFICIENT_POWER, IRQ_ISSUE, UNKNOWN])
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_a_gpu_nvml_cannot_open_never_passes(root: Path, code: int, device: str) -> None:
    write_params(root, runtime={"device": device})
    gpus = [h100(0, handle_error=code)]
    report, _ = run(root, gpus)
    name = {NO_PERMISSION: "NO_PERMISSION", INSUFFICIENT_POWER: "INSUFFICIENT_POWER", IRQ_ISSUE: "IRQ_ISSUE", UNKNOWN: "UNKNOWN"}[code]
    expected = "warn" if (code == NO_PERMISSION and device == "auto") else "fail"
    for row in GPU_CHECKS[:7]:
        check = next(c for c in report.checks if c.name == row)
        assert (check.status, check.code) == (expected, "gpu.unreadable"), row
        assert f"NVML index 0: {name}" in check.message
    assert report.accelerator.nvml.devices[0].handle_error is not None
    assert "accelerator.insufficient_vram" in issues(report)  # NVML cannot read its free memory, and torch gave none here
    assert not report.ok


def test_a_gpu_nvml_may_not_read_is_gated_on_torchs_reading_and_only_warned_of(root: Path) -> None:
    """NO_PERMISSION with CUDA not required: the GPU still works for CUDA, so the gate uses torch's free-memory reading
    (taken after the probe process's context) and the health rows warn."""
    torch_devices = [cuda_device(0, h100()).model_copy(update={"free_memory_bytes": 78 * GIB})]
    report, _ = run(root, [h100(handle_error=NO_PERMISSION)], torch_devices=torch_devices)
    assert report.ok and issues(report) == {"gpu.unreadable": "warning"}
    gate = next(c for c in report.checks if c.name == "accelerator")
    assert "free 78.00 GiB (no NVML device maps to it: torch's reading, after a CUDA context)" in gate.message


def test_an_unopenable_second_gpu_fails_only_the_worker_on_it(root: Path) -> None:
    write_params(root, runtime={"device": "cuda", "nproc_per_node": 2}, train={"micro_batches": 2})
    gpus = [h100(0), h100(1, handle_error=INSUFFICIENT_POWER)]
    report, _ = run(root, gpus)
    ecc = next(c for c in report.checks if c.name == "gpu.ecc")
    assert ecc.status == "fail" and "cuda:1: NVML cannot open the GPU (NVML index 1: INSUFFICIENT_POWER" in ecc.message
    assert f"cuda:0 (NVIDIA H100 80GB HBM3, {U[0]}): 0 uncorrectable" in ecc.message


# ---------------------------------------------------------------- 3. CUDA minor-version compatibility

# NVIDIA's documented pairs (CUDA toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions", Linux):
# the GA driver of each toolkit reports that toolkit's CUDA version
GA_DRIVERS = {"11.8": "520.61.05", "12.0": "525.60.13", "12.1": "530.30.02", "12.2": "535.54.03", "12.4": "550.54.14",
              "12.6": "560.28.03", "12.8": "570.26", "13.0": "580.65.06"}  # fmt: skip


@pytest.mark.parametrize(
    ("driver_cuda", "toolkit", "verdict"),
    [
        ("12.0", "12.8", "minor_older"),  # R525 runs a cu128 build: minimum of the 12.x family
        ("12.2", "12.4", "minor_older"),
        ("12.4", "12.4", "ok"),
        ("12.8", "12.6", "ok"),
        ("13.0", "12.8", "ok"),  # a newer major: backward compatible
        ("11.8", "12.1", "too_old"),  # R520 is below 12.x's minimum (525)
        ("12.8", "13.0", "too_old"),
        ("11.8", "11.8", "ok"),
    ],
)
def test_driver_compatibility_follows_nvidias_documented_pairs(driver_cuda: str, toolkit: str, verdict: str) -> None:
    assert driver_compatibility(GA_DRIVERS[driver_cuda], driver_cuda, toolkit)[0] == verdict


def test_driver_below_its_majors_minimum_is_too_old() -> None:
    """An early 12.0 driver (below 525.60.13) cannot rely on minor-version compatibility."""
    assert driver_compatibility("525.20.01", "12.0", "12.4")[0] == "too_old"
    assert driver_compatibility("450.80.02", "11.0", "11.8")[0] == "minor_older"
    assert driver_compatibility("450.36.06", "11.0", "11.8")[0] == "too_old"


def test_an_r535_driver_runs_a_cu128_torch_with_a_warning(root: Path) -> None:
    report, _ = run(root, [h100()], driver=Driver(version="535.104.05", cuda=12020), cuda_version="12.8")
    assert issues(report) == {"cuda.driver_minor_older": "warning"} and report.ok
    message = next(c.message for c in report.checks if c.name == "cuda.driver")
    assert "driver 535.104.05 supports CUDA 12.2; torch 2.13.0 was built for CUDA 12.8" in message
    report, _ = run(root, [h100()], driver=Driver(version="520.61.05", cuda=11080), cuda_version="12.8")
    assert issues(report) == {"cuda.driver_too_old": "error"}


# ---------------------------------------------------------------- 4. the clock-events fallback on older drivers


def test_an_r525_driver_reads_clock_events_through_the_throttle_reasons_call(root: Path) -> None:
    report, _ = run(root, [h100(clock_reasons=0x40)], driver=Driver(version="525.60.13", cuda=12000, missing=R525_MISSING))
    dev = report.accelerator.nvml.devices[0]
    assert dev.clock_event_reasons == ["hw_thermal_slowdown"] and "clock_events" not in dev.query_errors
    assert rows(report)["gpu.clocks"] == ("warn", "gpu.clocks_throttled")


def test_a_driver_lacking_both_clock_calls_skips_the_check(root: Path) -> None:
    missing = R525_MISSING | {"nvmlDeviceGetCurrentClocksThrottleReasons"}
    report, _ = run(root, [h100()], driver=Driver(missing=missing))
    check = next(c for c in report.checks if c.name == "gpu.clocks")
    assert check.status == "skip" and "the driver lacks nvmlDeviceGetCurrentClocksEventReasons" in check.message
    assert "gpu.query_failed" not in issues(report)


# ---------------------------------------------------------------- 5. one failing call never drops the whole probe


def test_a_missing_libcuda_loses_only_the_cuda_version(root: Path) -> None:
    lib = FakeNvmlLib([h100()], Driver(cuda_error=LIBRARY_NOT_FOUND))
    with lib.installed():
        probe = probe_nvml()
    assert probe.available and probe.cuda_driver_version is None and [d.uuid for d in probe.devices] == [U[0]]
    assert probe.query_errors == {"cuda_driver_version": "LIBRARY_NOT_FOUND: NVML Shared Library Not Found"}
    assert probe.devices[0].ecc_enabled is True and probe.driver_version == "550.54.15"


def test_a_failing_device_count_keeps_the_driver_facts() -> None:
    with FakeNvmlLib([h100()], Driver(count_error=UNKNOWN)).installed():
        probe = probe_nvml()
    assert probe.available and probe.devices == [] and probe.driver_version == "550.54.15" and probe.cuda_driver_version == "12.4"
    assert probe.query_errors == {"device_count": "UNKNOWN: Unknown Error"}


# ---------------------------------------------------------------- 6. every GPU the job uses is VRAM-gated and MIG-checked


def test_every_workers_gpu_is_vram_gated(root: Path) -> None:
    write_params(root, runtime={"device": "cuda", "nproc_per_node": 2}, train={"micro_batches": 2})
    gpus = [h100(0), GpuSpec(U[1], "NVIDIA H100 80GB HBM3", 80 * GIB, 1 * GIB, pci_bus=0x28)]
    report, _ = run(root, gpus)
    vram = [i for i in report.issues if i.code == "accelerator.insufficient_vram"]
    assert [i.path for i in vram] == ["cuda:1"] and "free 1.00 GiB of 80.00 GiB" in vram[0].message
    assert rows(report)["accelerator"] == ("fail", "accelerator.insufficient_vram")


def test_every_workers_gpu_is_mig_checked(root: Path) -> None:
    """cuda:1 is a MIG-enabled GPU reported as itself (CUDA cannot run on it so): the worker on it is warned of."""
    write_params(root, runtime={"device": "cuda", "nproc_per_node": 2}, train={"micro_batches": 2})
    gpus = [h100(0), mig_a100(1)]
    report, _ = run(root, gpus)
    assert [i.path for i in report.issues if i.code == "accelerator.mig_enabled"] == ["nvml:1"]


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}])
def test_preflight_for_a_launcher_checks_every_gpu_of_the_node(root: Path, env: dict[str, str]) -> None:
    """`WORLD_SIZE=2 geno-pipeline preflight` with runtime.nproc_per_node 1 (the README's torchrun flow), or a node's
    share of a larger job (LOCAL_WORLD_SIZE): every GPU this node's workers take is gated and smoke-tested, the
    distributed checks run for the launcher's world size, and the port is the launcher's."""
    write_params(root, runtime={"device": "cuda", "nproc_per_node": 1}, train={"micro_batches": 4})
    gpus = [h100(0), GpuSpec(U[1], "NVIDIA H100 80GB HBM3", 80 * GIB, 1 * GIB, pci_bus=0x28), h100(2)]
    report, process = run(root, gpus, env=env)
    assert process.plan is not None and process.plan.nproc_per_node == 2  # the probe process smoke-tests cuda:0 and cuda:1
    assert report.accelerator.selected_ordinals == [0, 1]
    assert [i.path for i in report.issues if i.code == "accelerator.insufficient_vram"] == ["cuda:1"]
    dist = report.distributed
    assert dist is not None and (dist.world_size, dist.nproc_per_node, dist.launcher) == (int(env["WORLD_SIZE"]), 2, True)
    assert rows(report)["distributed.port"] == ("skip", None)
    assert rows(report)["distributed.devices"] == ("pass", None)  # 2 workers, 3 GPUs visible
    assert rows(report)["distributed.backend"] == ("fail", "distributed.backend_unavailable")  # this torch has no NCCL


def test_preflight_for_a_launcher_with_too_few_gpus_says_how_to_launch_fewer(root: Path) -> None:
    write_params(root, runtime={"device": "cuda", "nproc_per_node": 1}, train={"micro_batches": 4})
    report, _ = run(root, [h100(0)], env={"WORLD_SIZE": "2"})
    short = next(i for i in report.issues if i.code == "distributed.not_enough_devices")
    assert "2 workers need one CUDA device each, 1 visible" in short.message
    assert "torchrun --nproc_per_node" in short.remedy and "LOCAL_WORLD_SIZE" in short.remedy
    assert "runtime.nproc_per_node" not in short.remedy  # the launcher, not the param, decides the workers per node


# ---------------------------------------------------------------- 7. MIG device names


def test_legacy_and_current_mig_names_in_cuda_visible_devices() -> None:
    lib = FakeNvmlLib([h100(0), mig_a100(1)])
    with lib.installed():
        devices = probe_nvml().devices
    assert [(m.uuid, m.gpu_instance_id, m.compute_instance_id) for m in devices[1].mig_instances] == [(MIG_UUIDS[0], 1, 0),
                                                                                                      (MIG_UUIDS[1], 2, 0)]  # fmt: skip
    legacy = f"MIG-{U[1]}/2/0,MIG-{U[1]}/1/0"
    mapped = map_visible_devices(legacy, devices)
    assert [(v.ordinal, v.nvml_index, v.mig_uuid) for v in mapped] == [(0, 1, MIG_UUIDS[1]), (1, 1, MIG_UUIDS[0])]
    assert [(v.nvml_index, v.mig_uuid) for v in map_visible_devices(MIG_UUIDS[1][:12], devices)] == [(1, MIG_UUIDS[1])]
    assert map_visible_devices(f"MIG-{U[1]}/9/0", devices) == []  # no such instance: CUDA sees nothing from there on


def test_a_mig_device_named_the_legacy_way_is_gated_on_its_own_memory(root: Path) -> None:
    gpus = [mig_a100(0)]
    torch_devices = [cuda_device(0, gpus[0].mig_devices[1], gpus[0])]
    report, _ = run(root, gpus, torch_devices=torch_devices, env={"CUDA_VISIBLE_DEVICES": f"MIG-{U[0]}/2/0"})
    assert report.accelerator.visible[0].mig_uuid == MIG_UUIDS[1] and report.accelerator.visible[0].selector == f"MIG-{U[0]}/2/0"
    assert report.accelerator.free_memory_bytes == 2 * GIB and issues(report) == {}  # 2 GiB free >= the profile's 2 GiB


# ---------------------------------------------------------------- 8. NVML's index is not CUDA's ordinal


def test_cuda_ordinals_map_to_nvml_by_uuid_not_position(root: Path) -> None:
    gpus = [h100(0), h100(1, processes=[(4242, GIB)])]
    report, _ = run(root, gpus, torch_devices=cuda_devices(gpus, [1, 0]))
    assert issues(report) == {"gpu.busy": "warning"}
    assert next(i.path for i in report.issues) == f"cuda:0 (NVIDIA H100 80GB HBM3, {U[1]})"


def test_without_torchs_uuids_an_index_maps_only_where_the_order_is_known() -> None:
    lib = FakeNvmlLib([h100(0), h100(1)])  # NVML index 0 sits on bus 0x18, index 1 on 0x28
    with lib.installed():
        devices = probe_nvml().devices
    assert [v.nvml_index for v in map_visible_devices("1", devices)] == [None]  # FASTEST_FIRST: CUDA's to say
    assert [(v.nvml_index, v.mapped_by) for v in map_visible_devices("1,0", devices, "PCI_BUS_ID")] == [(1, "pci_bus_id"),
                                                                                                        (0, "pci_bus_id")]  # fmt: skip
    assert [(v.nvml_index, v.mapped_by) for v in map_visible_devices(U[1], devices)] == [(1, "cuda_visible_devices")]
    reordered = [devices[1].model_copy(update={"index": 0}), devices[0].model_copy(update={"index": 1})]  # NVML index != bus order
    assert [v.nvml_index for v in map_visible_devices("0", reordered, "PCI_BUS_ID")] == [1]


def test_a_mig_device_without_a_uuid_maps_by_bus_id_only_when_alone() -> None:
    from geno_pipeline.preflight.checks.accelerator import map_cuda_devices

    lib = FakeNvmlLib([mig_a100(0)])
    with lib.installed():
        devices = probe_nvml().devices
    device = cuda_device(0, mig_a100().mig_devices[1], mig_a100()).model_copy(update={"uuid": None})
    assert [v.nvml_index for v in map_cuda_devices([device], devices, None, None)] == [None]  # two MIG devices share the bus
    alone = [devices[0].model_copy(update={"mig_instances": devices[0].mig_instances[1:]})]
    assert [(v.nvml_index, v.mig_uuid) for v in map_cuda_devices([device], alone, None, None)] == [(0, MIG_UUIDS[1])]


def test_a_cuda_device_maps_by_pci_bus_id_when_cuda_reports_no_uuid(root: Path) -> None:
    gpus = [h100(0), h100(1, processes=[(9, GIB)])]
    torch_devices = [d.model_copy(update={"uuid": None}) for d in cuda_devices(gpus, [1, 0])]
    report, _ = run(root, gpus, torch_devices=torch_devices)
    assert [(v.nvml_index, v.mapped_by) for v in report.accelerator.visible] == [(1, "pci_bus_id"), (0, "pci_bus_id")]
    assert issues(report) == {"gpu.busy": "warning"}


# ---------------------------------------------------------------- 9. the device under an external launcher


@pytest.mark.parametrize(
    ("requested", "local_rank", "device"),
    [("cuda", 0, "cuda:0"), ("cuda", 3, "cuda:3"), ("auto", 1, "cuda:1"), ("cuda:2", 2, "cuda:2"), ("cuda:1", None, "cuda:1"),
     ("cpu", 1, "cpu"), ("auto", None, "cuda:0")],
)  # fmt: skip
def test_worker_device_under_a_launcher(requested: str, local_rank: int | None, device: str) -> None:
    assert worker_device(requested, cuda_usable=True, local_rank=local_rank) == device


@pytest.mark.parametrize(("requested", "local_rank"), [("cuda:1", 0), ("cuda:0", 1), ("cuda:3", 2)])
def test_an_explicit_cuda_device_that_disagrees_with_local_rank_is_an_error(requested: str, local_rank: int) -> None:
    with pytest.raises(ValueError, match=rf"^runtime.device is {requested} but this worker's LOCAL_RANK is {local_rank}, "
                                         rf"which gives it cuda:{local_rank}$"):  # fmt: skip
        worker_device(requested, cuda_usable=True, local_rank=local_rank)
    with pytest.raises(TrainingError, match=rf"runtime.device is {requested} but this worker's LOCAL_RANK is {local_rank}.*fix: "):
        torch_training_device(requested, local_rank=local_rank)


class _Stop(Exception):
    """Ends the train command where the worker's device is settled (this machine has no CUDA device to go on with)."""


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """torch.cuda on a node with `count` H100s, as torch answers: get_device_properties refuses an ordinal it has not
    (torch raises AssertionError("Invalid device id"))."""
    import torch

    def props(device: Any) -> Any:
        index = torch.device(device).index if not isinstance(device, int) else device
        if index is None or not 0 <= index < count:
            raise AssertionError("Invalid device id")
        return dataclasses.make_dataclass("P", ["name", "major", "minor"])("NVIDIA H100 80GB HBM3", 9, 0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)


@pytest.mark.parametrize("requested", ["cuda", "auto"])
def test_every_worker_of_a_launched_cuda_job_trains_on_its_own_gpu(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, requested: str
) -> None:
    """A 4-worker job launched on a node with 4 GPUs (torch.cuda faked): the train command of each worker, from its
    launcher variables, joins the process group on cuda:LOCAL_RANK and hands the stage the same device; the workers'
    devices are the ordinals preflight checks (selected_cuda_ordinals). A worker whose LOCAL_RANK has no GPU, or one
    told another GPU, is refused before anything is built."""
    import contextlib

    from geno_pipeline import environment
    from geno_pipeline.cli import main
    from geno_pipeline.devices import selected_cuda_ordinals
    from geno_pipeline.distributed import group as dist_group
    from geno_pipeline.training import stage as train_stage

    _fake_cuda(monkeypatch, 4)
    seen: list[tuple[str, str]] = []
    real = environment.torch_training_device

    def spy(where: str) -> Any:
        def resolve(requested: str, *, local_rank: int | None = None) -> tuple[str, str]:
            device = real(requested, local_rank=local_rank)
            seen.append((where, device[0]))
            if where == "stage":
                raise _Stop
            return device

        return resolve

    @contextlib.contextmanager
    def joined(job: Any, *, backend: str, device: str, timeout_s: int) -> Any:
        seen.append(("group", device))
        yield dist_group.LocalGroup()

    monkeypatch.setattr(environment, "torch_training_device", spy("command"))
    monkeypatch.setattr(train_stage, "torch_training_device", spy("stage"))
    monkeypatch.setattr(train_stage, "preflight_fingerprint", lambda _layout: None)
    monkeypatch.setattr(dist_group, "joined", joined)
    monkeypatch.setattr(train_stage, "world_size_problems", lambda *_a, **_k: [])  # the faked group is one process
    devices = []
    for rank in range(4):
        write_params(tiny_dataset, runtime={"device": requested, "nproc_per_node": 4}, train={"micro_batches": 4})
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": "29500"}  # fmt: skip
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        seen.clear()
        with contextlib.suppress(_Stop):
            main(["train", "--no-progress", "--root", str(tiny_dataset)])
        assert [where for where, _ in seen] == ["command", "group", "stage"], seen
        assert len({device for _, device in seen}) == 1, seen
        devices.append(seen[0][1])
    assert devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert selected_cuda_ordinals(requested, cuda_usable=True, nproc_per_node=4) == [0, 1, 2, 3]
    with pytest.raises(TrainingError, match=r"runtime\.device is cuda but torch cannot use that CUDA device"):
        real("cuda", local_rank=4)  # a fifth worker on a 4-GPU node
    with pytest.raises(TrainingError, match=r"runtime\.device is cuda:0 but this worker's LOCAL_RANK is 2"):
        real("cuda:0", local_rank=2)


# ---------------------------------------------------------------- 10. free VRAM from NVML, before any context


def test_torch_facts_create_no_cuda_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch is asked for properties only (cudaGetDeviceProperties: no context); mem_get_info, which creates a context
    on the device it asks about and counts it as used, is never called."""
    import torch

    props = [
        dataclasses.make_dataclass("P", ["name", "total_memory", "major", "minor", "uuid", "pci_domain_id", "pci_bus_id",
                                         "pci_device_id"])("NVIDIA H100", 80 * GIB, 9, 0, U[i][4:], 0, 0x18 + 0x10 * i, 0)
        for i in range(2)
    ]  # fmt: skip

    def context(*_: object) -> None:
        raise AssertionError("a CUDA context was created")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(torch.cuda, "mem_get_info", context)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_90"])
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    facts = torch_cuda_facts()
    assert facts["error"] is None and [(d["uuid"], d["pci_bus_id"], d["free_memory_bytes"]) for d in facts["devices"]] == [
        (U[0][4:], "00000000:18:00", None), (U[1][4:], "00000000:28:00", None)]  # fmt: skip
    asked: list[int] = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (asked.append(i), (70 * GIB, 80 * GIB))[1])
    facts = torch_cuda_facts(measure=[1])  # the job's device only, which the smoke test is about to touch anyway
    assert asked == [1] and [d["free_memory_bytes"] for d in facts["devices"]] == [None, 70 * GIB]


def test_free_vram_is_nvmls_reading(root: Path) -> None:
    report, _ = run(root, [GpuSpec(U[0], "NVIDIA H100 80GB HBM3", 80 * GIB, 3 * GIB)])
    assert report.accelerator.free_memory_bytes == 3 * GIB and report.ok


# ---------------------------------------------------------------- 11. TF32 through the API torch has

TF32_CHILD = """
import torch
{before}
from geno_pipeline.torchflags import apply_torch_determinism, torch_determinism_flags
apply_torch_determinism(deterministic=True, cuda=False)
flags = torch_determinism_flags()
print(flags["tf32_matmul"], flags["tf32_cudnn"], flags["tf32_cublas_override"], torch.backends.cuda.matmul.fp32_precision)
"""


@pytest.mark.parametrize("before", ['torch.backends.fp32_precision = "tf32"', 'torch.backends.cudnn.fp32_precision = "tf32"', "pass"])
def test_tf32_is_set_and_read_through_the_api_torch_has(before: str) -> None:
    """A library that set TF32 through torch's fp32_precision API first must not make the settings (or their read-back)
    raise torch's "mix of the legacy and new APIs" error."""
    code = TF32_CHILD.format(before=before)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, env=_env())
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.split() == ["False", "False", "False", "ieee"]


def test_tf32_cublas_override_is_reported_and_fails_a_cuda_run(root: Path) -> None:
    code = TF32_CHILD.format(before="pass")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=_env(TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="1"))  # fmt: skip
    assert out.stdout.split()[:3] == ["False", "False", "True"], out.stderr[-800:]
    forced = dataclasses.replace(DETERMINISTIC, tf32_cublas_override=True)
    write_params(root, runtime={"device": "cuda"})
    report, _ = run(root, [h100()], determinism=forced)
    assert issues(report) == {"determinism.tf32_override": "error"}
    assert report.determinism is not None and report.determinism.tf32_allowed and report.determinism.tf32_cublas_override
    write_params(root, runtime={"device": "cpu"})
    report, _ = run(root, [h100()], determinism=forced)
    assert "determinism.tf32_override" not in issues(report)  # cuBLAS is not used on the CPU


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"}
    return env | extra


# ---------------------------------------------------------------- 12. the Python versions we say we support


def test_the_python_floor_is_the_one_the_code_needs() -> None:
    """The code imports tomllib (3.11+) and the lock pins numpy 2.4 (3.11+): pyproject, ruff and the README say 3.11."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11"
    assert project["tool"]["ruff"]["target-version"] == "py311"
    readme = (REPO / "README.md").read_text()
    assert "Python ≥ 3.11" in readme and "3.10" not in readme.split("## ")[0]

"""GPU-node preflight without a GPU: the real pynvml over a fake NVML library (tests/nvml_lib.py), torch's CUDA facts
and the probe process injected; every health, compatibility and kernel code; the real probe process and its time
bounds; the determinism settings it applies."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.config import PreflightParams, RuntimeParams
from geno_pipeline.jsonio import validate_document
from geno_pipeline.preflight import TrainingPreflightRequest, build_training_preflight_report
from geno_pipeline.preflight.checks.cuda import arch_support, cuda_version_tuple
from geno_pipeline.preflight.checks.gpu import GPU_ROWS, REMEDIES
from geno_pipeline.preflight.documents import KernelSmoke, TorchDevice
from geno_pipeline.preflight.nvml import CLOCK_EVENT_REASONS, clock_event_names, probe_nvml
from geno_pipeline.preflight.torch_process import TorchDeterminismFlags, TorchProbePlan, TorchProbeProcess
from geno_pipeline.torchprobe import kernel_smoke
from tests.conftest import REPO, write_params
from tests.fakes import (
    DETERMINISTIC,
    FAKE_CPU_CLASS,
    FixedTorchProcess,
    cuda_devices,
    fake_torch,
    gpu_environment,
    kernel,
    ok_dependency,
)
from tests.nvml_lib import GPU_IS_LOST, UNKNOWN, Driver, FakeNvmlLib, GpuSpec

GIB = 1024**3
H100 = "NVIDIA H100 80GB HBM3"
UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-0000-0000-0000-00000000000{i}" for i in range(4)]
GPU_CHECKS = [row for row, _, _ in GPU_ROWS] + ["cuda.driver", "cuda.arch", "cuda.kernel"]


def gpu(i: int = 0, **health: object) -> GpuSpec:
    return GpuSpec(UUIDS[i], H100, 80 * GIB, 70 * GIB, pci_bus=0x18 + 0x10 * i, **health)  # type: ignore[arg-type]


def run(
    root: Path,
    gpus: list[GpuSpec],
    *,
    torch_devices: list[TorchDevice] | None = None,
    env: dict[str, str] | None = None,
    kernels: list[KernelSmoke] | None = None,
    determinism: TorchDeterminismFlags = DETERMINISTIC,
    driver: Driver | None = None,
    **torch_kw: object,
):
    """A preflight report for a fake machine, through the default accelerator probe: the real pynvml over the fake
    NVML library, torch's facts from the (fixed) probe process. torch sees `torch_devices` (default: every GPU, in
    NVML's order)."""
    devices = cuda_devices(gpus) if torch_devices is None else torch_devices
    th = fake_torch(devices, **torch_kw)  # type: ignore[arg-type]
    lib = FakeNvmlLib(gpus, driver)
    process = FixedTorchProcess(cuda=th, determinism=determinism, nvml=lib)
    process.kernels = kernels if kernels is not None else [kernel(i) for i in range(len(devices))]
    with lib.installed(), gpu_environment(env):
        report = build_training_preflight_report(TrainingPreflightRequest.for_root(root), dependency_probe=ok_dependency,
                                                 torch_process=process)  # fmt: skip
    validate_document(json.loads(report.model_dump_json()), "preflight_report")
    return report, process


def rows(report) -> dict[str, tuple[str, str | None]]:
    return {c.name: (c.status, c.code) for c in report.checks}


def issues(report) -> dict[str, str]:
    return {i.code: i.severity for i in report.issues}


@pytest.fixture()
def root(tiny_dataset: Path) -> Path:
    write_params(tiny_dataset, runtime={"device": "auto"})
    return tiny_dataset


def test_healthy_gpu_passes_every_check_and_keeps_the_facts(root: Path) -> None:
    report, process = run(root, [gpu()])
    assert report.ok and issues(report) == {}
    assert {name: rows(report)[name][0] for name in GPU_CHECKS if rows(report)[name][0] != "pass"} == {"gpu.retired_pages": "skip"}
    dev = report.accelerator.nvml.devices[0]
    assert (dev.name, dev.uuid, dev.driver_version, dev.cuda_driver_version) == (H100, UUIDS[0], "550.54.15", "12.4")
    assert (dev.total_memory_bytes, dev.free_memory_bytes, dev.temperature_c, dev.power_limit_w, dev.power_draw_w) == (
        80 * GIB, 70 * GIB, 45, 700.0, 95.5)  # fmt: skip
    assert (dev.sm_clock_mhz, dev.memory_clock_mhz, dev.max_sm_clock_mhz, dev.clock_event_reasons) == (1980, 2619, 1980, ["gpu_idle"])
    assert (dev.ecc_enabled, dev.ecc_volatile_uncorrected, dev.ecc_aggregate_uncorrected) == (True, 0, 0)
    assert (dev.compute_mode, dev.persistence_mode, dev.processes, dev.pci_bus_id) == ("default", True, [], "00000000:18:00.0")
    assert report.accelerator.selected_ordinals == [0] and [k.outcome for k in report.kernel_smoke] == ["ok"]
    assert report.accelerator.free_memory_bytes == 70 * GIB and report.accelerator.visible[0].mapped_by == "uuid"
    assert process.plan is not None and process.plan.cuda_timeout_s == 60.0 and process.closed


# (health of the one GPU, the code, its severity, the row that fails or warns)
HEALTH_CASES = [
    ({"ecc_volatile_uncorrected": 1}, "gpu.ecc_uncorrectable", "error", "gpu.ecc"),
    ({"retired_pending": 1, "remap": None}, "gpu.retired_pages_pending", "error", "gpu.retired_pages"),
    ({"remap": (0, 1, 1, 0)}, "gpu.row_remap_pending", "error", "gpu.row_remap"),
    ({"remap": (0, 1, 0, 1)}, "gpu.row_remap_failed", "error", "gpu.row_remap"),
    ({"clock_reasons": 0x40 | 0x4}, "gpu.clocks_throttled", "warning", "gpu.clocks"),
    ({"clock_reasons": 0x80}, "gpu.clocks_throttled", "warning", "gpu.clocks"),
    ({"processes": [(4242, 10 * GIB), (77, None)]}, "gpu.busy", "warning", "gpu.processes"),
    ({"compute_mode": 2}, "gpu.compute_prohibited", "error", "gpu.compute_mode"),
    ({"errors": {"nvmlDeviceGetTotalEccErrors": UNKNOWN}}, "gpu.query_failed", "warning", "gpu.ecc"),
    ({"errors": {"nvmlDeviceGetRemappedRows": GPU_IS_LOST}}, "gpu.lost", "error", "gpu.row_remap"),
]


@pytest.mark.parametrize(("health", "code", "severity", "row"), HEALTH_CASES)
def test_each_health_code(root: Path, health: dict, code: str, severity: str, row: str) -> None:
    report, _ = run(root, [gpu(**health)])
    assert issues(report) == {code: severity}
    assert report.ok is (severity == "warning")
    assert rows(report)[row] == ("fail" if severity == "error" else "warn", code)
    issue = next(i for i in report.issues if i.code == code)
    assert issue.path == f"cuda:0 ({H100}, {UUIDS[0]})" and issue.remedy == REMEDIES[code]


def test_health_messages_name_the_reason_and_the_processes(root: Path) -> None:
    report, _ = run(root, [gpu(clock_reasons=0x40 | 0x4 | 0x1)])
    message = next(i.message for i in report.issues if i.code == "gpu.clocks_throttled")
    assert "hw_thermal_slowdown" in message and "sw_power_cap" not in message and "45 °C" in message
    report, _ = run(root, [gpu(processes=[(4242, 10 * GIB), (77, None)])])
    message = next(i.message for i in report.issues if i.code == "gpu.busy")
    assert "pid 4242 (10.00 GiB)" in message and "pid 77 (memory unknown)" in message
    assert [(p.pid, p.used_memory_bytes) for p in report.accelerator.nvml.devices[0].processes or []] == [(4242, 10 * GIB), (77, None)]


def test_power_cap_alone_and_an_idle_exclusive_gpu_pass(root: Path) -> None:
    report, _ = run(root, [gpu(clock_reasons=0x4, compute_mode=3, persistence=0)])
    assert report.ok and issues(report) == {}
    assert rows(report)["gpu.clocks"] == ("pass", None) and rows(report)["gpu.compute_mode"] == ("pass", None)
    persistence = next(c for c in report.checks if c.name == "gpu.persistence")
    assert persistence.status == "pass" and "persistence mode off" in persistence.message
    assert report.accelerator.nvml.devices[0].persistence_mode is False


def test_exclusive_process_while_busy_is_an_error(root: Path) -> None:
    report, _ = run(root, [gpu(compute_mode=3, processes=[(99, GIB)])])
    assert issues(report) == {"gpu.exclusive_busy": "error", "gpu.busy": "warning"}
    assert not report.ok


NOT_SUPPORTED_EVERYWHERE = {
    "nvmlDeviceGetEccMode", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRetiredPagesPendingStatus", "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeMode",
    "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetTemperature", "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo", "nvmlDeviceGetPciInfo_v3",
}  # fmt: skip


def test_not_supported_is_skip_with_the_reason_never_a_failure(root: Path) -> None:
    report, _ = run(root, [gpu(errors=dict.fromkeys(NOT_SUPPORTED_EVERYWHERE, 3))])
    assert report.ok and issues(report) == {}
    for name, _, _ in GPU_ROWS:
        status, code = rows(report)[name]
        assert (status, code) == ("skip", None), name
        assert "not supported on this GPU" in next(c.message for c in report.checks if c.name == name)
    dev = report.accelerator.nvml.devices[0]
    assert dev.retired_pages_pending is None and dev.temperature_c is None and dev.query_errors == {}
    assert dev.not_supported["retired_pages"] == "Not Supported"


def test_ecc_disabled_is_skip(root: Path) -> None:
    report, _ = run(root, [gpu(ecc_mode=(0, 0), ecc_volatile_uncorrected=0)])
    assert report.ok and rows(report)["gpu.ecc"] == ("skip", None)


def test_a_lost_gpu_is_reported_once(root: Path) -> None:
    lost = dict.fromkeys(("nvmlDeviceGetEccMode", "nvmlDeviceGetRemappedRows", "nvmlDeviceGetComputeMode"), GPU_IS_LOST)
    report, _ = run(root, [gpu(errors=lost)])
    assert [i.code for i in report.issues] == ["gpu.lost"]
    assert report.accelerator.nvml.devices[0].lost is True


def test_a_gpu_whose_handle_cannot_be_read_is_lost_not_a_crash(root: Path) -> None:
    report, _ = run(root, [gpu(handle_error=GPU_IS_LOST)])
    assert "gpu.lost" in issues(report) and not report.ok
    assert report.accelerator.nvml.devices[0].uuid == "" and report.accelerator.nvml.devices[0].lost


def test_several_devices_under_cuda_visible_devices(root: Path) -> None:
    """Physical GPUs 2 and 0 become cuda:0 and cuda:1 for a two-worker job; only they are judged."""
    write_params(root, runtime={"device": "auto", "nproc_per_node": 2}, train={"micro_batches": 2})
    volta = {"retired_pending": 0, "remap": None}  # page retirement, no row remapping
    gpus = [gpu(0, processes=[(11, GIB)], **volta), gpu(1, ecc_volatile_uncorrected=5, **volta), gpu(2, retired_pending=1, remap=None),
            gpu(3, **volta)]  # fmt: skip
    report, _ = run(root, gpus, torch_devices=cuda_devices(gpus, [2, 0]), env={"CUDA_VISIBLE_DEVICES": "2,0"})
    assert report.accelerator.selected_ordinals == [0, 1]
    assert [(v.ordinal, v.nvml_index, v.selector) for v in report.accelerator.visible] == [(0, 2, "2"), (1, 0, "0")]
    by_code = {i.code: i.path for i in report.issues if i.code.startswith(("gpu.", "cuda."))}
    assert by_code == {"gpu.retired_pages_pending": f"cuda:0 ({H100}, {UUIDS[2]})", "gpu.busy": f"cuda:1 ({H100}, {UUIDS[0]})"}
    retired = next(c for c in report.checks if c.name == "gpu.retired_pages")
    assert retired.status == "fail" and retired.message.startswith(f"cuda:0 ({H100}, {UUIDS[2]}): memory pages")
    assert f"cuda:1 ({H100}, {UUIDS[0]}): no retired pages pending" in retired.message


def test_nvml_lists_processes_before_the_probe_process_may_touch_cuda(root: Path) -> None:
    """Through the default accelerator probe, whose torch facts come from the probe process: NVML's C calls (the
    process listing included) all happen before the process is let go, and none after."""
    _, process = run(root, [gpu(processes=[(7, GIB)])])
    assert process.nvml is not None and process.nvml.c_calls("nvmlDeviceGetComputeRunningProcesses_v3") >= 1
    assert process.released_after_nvml_calls == len(process.nvml.calls)


def test_arch_missing_from_torchs_build(root: Path) -> None:
    sm120 = [gpu(capability=(12, 0))]
    report, _ = run(root, sm120, arch_list=["sm_80", "sm_90"])
    assert issues(report) == {"cuda.arch_unsupported": "error"}
    assert "compute capability 12.0 (sm_120) has no kernels" in report.issues[0].message
    report, _ = run(root, [gpu(capability=(8, 6))], arch_list=["sm_80", "sm_90"])
    assert report.ok and "runs sm_80" in next(c.message for c in report.checks if c.name == "cuda.arch")


@given(st.integers(3, 12), st.integers(0, 9))
def test_arch_support_rules(major: int, minor: int) -> None:
    cap = f"{major}.{minor}"
    assert arch_support(cap, [f"sm_{major}{minor}", "compute_30"]) == f"sm_{major}{minor}"  # an exact cubin first
    assert arch_support(cap, [f"sm_{major}0"]) == f"sm_{major}0"  # same major, lower or equal minor
    assert arch_support(cap, [f"sm_{major + 1}0"]) is None  # newer major: no
    assert arch_support(cap, [f"sm_{major}{minor}a"]) == f"sm_{major}{minor}a"
    assert arch_support(cap, [f"compute_{major}0"]) == f"compute_{major}0"  # PTX JIT forward
    assert arch_support(cap, [f"compute_{major + 1}0"]) is None
    if minor > 0:
        assert arch_support(cap, [f"sm_{major}0a"]) is None  # arch-specific cubins run on exactly that version


def test_cuda_version_tuple() -> None:
    assert cuda_version_tuple("12.4") == (12, 4) and cuda_version_tuple("12.10.1") == (12, 10, 1)
    assert cuda_version_tuple("12.10") > cuda_version_tuple("12.9")


@pytest.mark.parametrize(
    ("k", "code"),
    [
        (kernel(0, "mismatch", error=0.3), "cuda.kernel_mismatch"),
        (kernel(0, "failed", error=None, identical=None), "cuda.kernel_failed"),
        (kernel(0, "timeout", error=None, identical=None), "cuda.kernel_timeout"),
        (kernel(0, "nondeterministic", identical=False), "cuda.kernel_nondeterministic"),
    ],
)
def test_each_kernel_code(root: Path, k, code: str) -> None:
    report, _ = run(root, [gpu()], kernels=[k])
    assert issues(report) == {code: "error"} and rows(report)["cuda.kernel"] == ("fail", code)


def test_nondeterministic_kernel_is_allowed_when_determinism_is_off(root: Path) -> None:
    write_params(root, runtime={"device": "auto", "deterministic": False})
    flags = TorchDeterminismFlags(False, False, False, False, True, True, False, FAKE_CPU_CLASS)
    report, _ = run(root, [gpu()], kernels=[kernel(0, "nondeterministic", identical=False)], determinism=flags)
    assert issues(report) == {"determinism.disabled": "warning"} and rows(report)["cuda.kernel"][0] == "pass"


def test_determinism_read_back_from_torch(root: Path) -> None:
    tf32_on = TorchDeterminismFlags(True, False, False, True, True, False, False, FAKE_CPU_CLASS)
    report, _ = run(root, [gpu()], determinism=tf32_on)
    assert issues(report) == {"determinism.unsupported": "error"} and report.determinism is not None
    assert report.determinism.tf32_allowed is True and "TF32 on" in report.issues[0].message
    initialised = TorchDeterminismFlags(True, False, False, True, False, False, True, FAKE_CPU_CLASS)
    report, _ = run(root, [gpu()], determinism=initialised)
    assert issues(report) == {"determinism.cuda_already_initialized": "warning"}


def test_cpu_machine_every_gpu_check_is_skip(root: Path) -> None:
    report, process = run(root, [], torch_devices=[])
    assert report.ok and report.resolved_device == "cpu" and report.kernel_smoke == []
    assert {rows(report)[name] for name in GPU_CHECKS} == {("skip", None)}
    assert process.plan == TorchProbePlan("auto", 1, True, 60.0)


def test_failed_torch_import_in_the_probe_process(root: Path) -> None:
    th = fake_torch()
    process = FixedTorchProcess(cuda=th, imported=False)
    with FakeNvmlLib([], Driver(init_error=9)).installed(), gpu_environment():
        report = build_training_preflight_report(TrainingPreflightRequest.for_root(root), torch_process=process)
    assert issues(report)["dependency.import_error"] == "error"
    torch_dep = next(d for d in report.dependencies if d.import_name == "torch")
    assert not torch_dep.available and "libtorch_cpu.so" in torch_dep.reason
    assert rows(report)["determinism"] == ("skip", None)


@given(st.integers(0, 2**12 - 1))
def test_clock_event_names_cover_every_bit(mask: int) -> None:
    names = clock_event_names(mask)
    known = dict(CLOCK_EVENT_REASONS)
    assert (
        sum(bit for bit, name in CLOCK_EVENT_REASONS if name in names) + sum(int(n[4:], 16) for n in names if n.startswith("bit_")) == mask
    )
    assert len(names) == len(set(names)) and all(n in known.values() or n.startswith("bit_") for n in names)


def test_nvml_probe_never_raises_for_errors() -> None:
    lib = FakeNvmlLib([gpu(0, errors={"nvmlDeviceGetTemperature": UNKNOWN}), gpu(1)])
    with lib.installed():
        probe = probe_nvml()
    assert probe.available and [d.index for d in probe.devices] == [0, 1]
    assert probe.devices[0].query_errors == {"temperature": "UNKNOWN: Unknown Error"} and probe.devices[1].query_errors == {}


# ---------------------------------------------------------------- the real probe process and its bounds


def test_real_probe_process_on_this_machine() -> None:
    facts = TorchProbeProcess(TorchProbePlan("auto", 1, True, 60.0)).facts()
    assert facts.imported and facts.failure is None and facts.version is not None
    assert facts.cuda is not None and facts.determinism is not None
    assert facts.determinism.deterministic_algorithms and not facts.determinism.tf32_matmul and not facts.determinism.cudnn_benchmark
    from geno_pipeline.torchflags import cpu_kernel_class

    assert facts.determinism.cpu_class == cpu_kernel_class()  # the probe process reads the same class torch has here
    if not facts.cuda.cuda_available:
        assert facts.kernels == []


FAKE_CHILD = """
import json, sys, time
def say(event, **f):
    print(json.dumps({"event": event, **f}), flush=True)
say("imported", ok=True, error=None, version="2.13.0", duration_ms=5.0)
sys.stdin.readline()
MODE = sys.argv[1]
if MODE == "hang_cuda":
    time.sleep(60)
if MODE == "crash_cuda":
    print("Segmentation fault in libcuda", file=sys.stderr, flush=True)
    sys.exit(139)
cuda = {"torch_version": "2.13.0", "cuda_available": True, "device_count": 2, "cuda_version": "12.4", "cudnn_version": 1,
        "arch_list": ["sm_90"], "devices": [], "error": None}
flags = {"deterministic_algorithms": True, "deterministic_warn_only": False, "cudnn_benchmark": False,
         "cudnn_deterministic": True, "tf32_matmul": False, "tf32_cudnn": False, "cuda_initialized_before": False,
         "cpu_class": "GenuineIntel/AVX2"}
say("cuda", cuda=cuda, determinism=flags, ordinals=[0, 1])
say("kernel", ordinal=0, device="cuda:0", seed=1, size=256, tolerance=1e-4, outcome="ok", max_rel_error=1e-7,
    repeat_identical=True, duration_ms=3.0, error=None)
time.sleep(60)
"""


@pytest.mark.parametrize(("mode", "outcomes", "failure"), [
    ("hang_cuda", ["timeout", "timeout"], "no answer within 1 s while starting CUDA"),
    ("crash_cuda", ["failed", "failed"], "exited with code 139 while starting CUDA: Segmentation fault in libcuda"),
    ("hang_kernel", ["ok", "timeout"], "no answer within 1 s while running the kernel smoke test on cuda:1"),
])  # fmt: skip
def test_probe_process_time_bound_and_crash(tmp_path: Path, mode: str, outcomes: list[str], failure: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(FAKE_CHILD))
    process = TorchProbeProcess(TorchProbePlan("cuda", 2, True, 1.0), command=[sys.executable, str(script), mode])
    facts = process.facts()
    assert [k.outcome for k in facts.kernels] == outcomes
    assert facts.failure is not None and failure in facts.failure
    assert process.proc.poll() is not None  # killed, not left behind


def test_probe_process_import_failure_and_silence(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text("import sys, time\ntime.sleep(60)\n")
    facts = TorchProbeProcess(TorchProbePlan("auto", 1, True, 1.0, import_timeout_s=0.5), command=[sys.executable, str(script)]).facts()
    assert not facts.imported and facts.import_error == "import failed: no answer within 0.5 s while importing torch"


# ---------------------------------------------------------------- the kernel smoke test itself, on the CPU


def test_kernel_smoke_on_cpu_and_its_failures() -> None:
    import torch

    ok = kernel_smoke("cpu")
    assert ok["outcome"] == "ok" and ok["repeat_identical"] is True and ok["max_rel_error"] <= ok["tolerance"]
    assert kernel_smoke("cpu", matmul=lambda a, b: (a @ b) * 1.01)["outcome"] == "mismatch"
    assert kernel_smoke("cpu", matmul=lambda a, b: (a @ b) * float("nan"))["outcome"] == "mismatch"

    def boom(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    failed = kernel_smoke("cpu", matmul=boom)
    assert failed["outcome"] == "failed" and "illegal memory access" in failed["error"]
    calls = iter([0.0, 1e-3])
    jitter = kernel_smoke("cpu", matmul=lambda a, b: (a @ b) + next(calls))
    assert jitter["outcome"] == "nondeterministic" and jitter["repeat_identical"] is False


# ---------------------------------------------------------------- the determinism settings without torch._inductor


def test_set_deterministic_algorithms_matches_torchs_function() -> None:
    """torch.use_deterministic_algorithms does exactly two things; torchflags does both without importing inductor."""
    import torch

    fn = ast.parse(textwrap.dedent(inspect.getsource(torch.use_deterministic_algorithms))).body[0]
    assert isinstance(fn, ast.FunctionDef)
    body = [ast.unparse(s) for s in fn.body[1:]]  # after the docstring
    assert body == [
        "import torch._inductor.config as inductor_config",
        "inductor_config.deterministic = mode",
        "_C._set_deterministic_algorithms(mode, warn_only=warn_only)",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("inductor_first", [False, True])
def test_inductor_sees_the_determinism_setting_either_way(inductor_first: bool) -> None:
    code = textwrap.dedent(f"""
        import sys, torch
        if {inductor_first}:
            import torch._inductor.config
        from geno_pipeline.torchflags import apply_torch_determinism, torch_determinism_flags
        apply_torch_determinism(deterministic=True, cuda=False)
        assert ("torch._inductor.config" in sys.modules) is {inductor_first}
        import torch._inductor.config as c
        flags = torch_determinism_flags()
        print(c.deterministic, flags["deterministic_algorithms"], flags["deterministic_warn_only"], flags["tf32_matmul"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, timeout=120)
    assert out.stdout.split() == ["True", "True", "False", "False"]


def test_runtime_and_preflight_params_defaults() -> None:
    assert PreflightParams().cuda_timeout_s == 60.0 and RuntimeParams().nproc_per_node == 1


def test_every_gpu_and_cuda_code_has_a_readme_row_with_its_severity() -> None:
    readme = (REPO / "docs/preflight.md").read_text(encoding="utf-8")
    warnings = {"gpu.clocks_throttled", "gpu.busy", "gpu.query_failed", "cuda.driver_minor_older"}
    for code in REMEDIES:
        severity = "warning" if code in warnings else "error"
        assert re.search(rf"^\| `{re.escape(code)}` \| {severity}( \([^|]*\))? \| ", readme, flags=re.M), code


def test_fingerprint_tf32_is_what_the_probe_process_read_from_torch(root: Path) -> None:
    from geno_pipeline.preflight.stage import fingerprint_tf32

    runtime = RuntimeParams(device="auto", deterministic=True)
    tf32_on = TorchDeterminismFlags(True, False, False, True, True, False, False, FAKE_CPU_CLASS)
    assert fingerprint_tf32(run(root, [gpu()], determinism=tf32_on)[0], runtime) is True
    assert fingerprint_tf32(run(root, [gpu()])[0], runtime) is False
    cuda_only_tf32 = TorchDeterminismFlags(True, False, False, True, False, True, False, FAKE_CPU_CLASS)
    assert fingerprint_tf32(run(root, [gpu()], determinism=cuda_only_tf32)[0], runtime) is True
    unmeasured = run(root, [gpu()])[0].model_copy(update={"determinism": None})
    assert fingerprint_tf32(unmeasured, runtime) is False
    assert fingerprint_tf32(unmeasured, RuntimeParams(device="auto", deterministic=False)) is True


def test_fingerprint_cpu_class_is_what_the_probe_process_read(root: Path) -> None:
    """environment.json's cpu_class comes from the probe process's reading; null when the probe did not report."""
    from geno_pipeline.preflight.stage import fingerprint_cpu_class

    other = dataclasses.replace(DETERMINISTIC, cpu_class="AuthenticAMD/AVX512")
    for flags, want in ((DETERMINISTIC, FAKE_CPU_CLASS), (other, "AuthenticAMD/AVX512")):
        report = run(root, [gpu()], determinism=flags)[0]
        assert report.determinism is not None and report.determinism.cpu_class == want
        assert fingerprint_cpu_class(report) == want
    assert fingerprint_cpu_class(run(root, [gpu()])[0].model_copy(update={"determinism": None})) is None


@pytest.mark.parametrize(
    ("cpuinfo", "vendor"),
    [
        ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n", "GenuineIntel"),
        ("processor\t: 0\nvendor_id\t: AuthenticAMD\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n", "AuthenticAMD"),
        ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n", "0x41"),
        ("processor\t: 0\nvendor_id\t:\nmodel name\t: x\n", None),
        ("", None),
    ],
)
def test_cpu_vendor_reads_proc_cpuinfo(cpuinfo: str, vendor: str | None) -> None:
    from geno_pipeline.torchflags import cpu_vendor

    assert cpu_vendor(cpuinfo) == vendor


def test_cpu_kernel_class_names_the_vendor_and_torchs_instruction_set(tmp_path: Path) -> None:
    import torch

    from geno_pipeline.torchflags import cpu_kernel_class

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    assert cpu_kernel_class(str(info)) == f"GenuineIntel/{torch.backends.cpu.get_cpu_capability()}"
    assert cpu_kernel_class(str(tmp_path / "missing")).endswith(f"/{torch.backends.cpu.get_cpu_capability()}")

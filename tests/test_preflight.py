"""Preflight with injected fake NVML/torch probes and dependencies: exact issue codes and `ok`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geno_pipeline.cli import main
from geno_pipeline.config import PreflightParams, RuntimeParams
from geno_pipeline.jsonio import validate_document
from geno_pipeline.preflight import (
    DependencySpec,
    TrainingPreflightRequest,
    build_training_preflight_report,
    map_visible_devices,
    probe_dependency,
)
from geno_pipeline.preflight.documents import TorchCudaProbe
from tests.conftest import write_params
from tests.fakes import FixedTorchProcess, cuda_device, cuda_devices, fake_torch, gpu_environment, kernel, ok_dependency
from tests.nvml_lib import Driver, FakeNvmlLib, GpuSpec, MigSpec, no_nvml_library

GIB = 1024**3


def report_for(
    root: Path, nvml: FakeNvmlLib | None, torch_probe: TorchCudaProbe, env: dict[str, str] | None = None, dependency_probe=ok_dependency
):
    """A report through the default accelerator probe: the real pynvml over `nvml` (None: no NVIDIA library at all)."""
    request = TrainingPreflightRequest.for_root(root)
    kernels = [kernel(i) for i in range(torch_probe.device_count)][:1]
    library = no_nvml_library() if nvml is None else nvml.installed()
    with library, gpu_environment(env):
        return build_training_preflight_report(
            request, dependency_probe=dependency_probe, torch_process=FixedTorchProcess(cuda=torch_probe, kernels=kernels)
        )


def codes(report) -> set[str]:
    return {i.code for i in report.issues}


H100 = ("NVIDIA H100 80GB HBM3", 80 * GIB)
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@pytest.fixture()
def root(tiny_dataset: Path) -> Path:
    write_params(tiny_dataset, runtime={"device": "auto"})
    return tiny_dataset


def test_preflight_no_nvml_library(root: Path) -> None:
    report = report_for(root, None, fake_torch())
    assert report.ok and codes(report) == set() and report.resolved_device == "cpu"
    assert {c.name: (c.status, c.code) for c in report.checks}["nvml"] == ("skip", "nvml.library_not_found")
    write_params(root, runtime={"device": "auto"}, preflight={"require_accelerator": True})
    report = report_for(root, None, fake_torch())
    assert not report.ok and codes(report) == {"nvml.library_not_found", "accelerator.not_found"}


def test_preflight_driver_not_loaded(root: Path) -> None:
    report = report_for(root, FakeNvmlLib([], Driver(init_error=9)), fake_torch())
    assert report.ok and codes(report) == set()
    write_params(root, runtime={"device": "cuda"})
    report = report_for(root, FakeNvmlLib([], Driver(init_error=9)), fake_torch())
    assert not report.ok and codes(report) == {"nvml.driver_not_loaded", "accelerator.not_found"}


def test_preflight_driver_library_mismatch(root: Path) -> None:
    report = report_for(root, FakeNvmlLib([], Driver(init_error=18)), fake_torch())
    assert report.ok and codes(report) == {"nvml.driver_library_mismatch"}
    assert report.issues[0].severity == "warning"
    report = report_for(root, FakeNvmlLib([], Driver(init_error=4)), fake_torch())
    assert report.ok and codes(report) == {"nvml.no_permission"}


def test_preflight_zero_gpus(root: Path) -> None:
    report = report_for(root, FakeNvmlLib([]), fake_torch())
    assert report.ok and codes(report) == set() and report.resolved_device == "cpu"
    assert {c.name: c.status for c in report.checks}["accelerator"] == "skip"


def test_preflight_one_gpu_enough_free_vram(root: Path) -> None:
    gpus = [GpuSpec(UUID0, H100[0], H100[1], 70 * GIB)]
    report = report_for(root, FakeNvmlLib(gpus), fake_torch(cuda_devices(gpus)))
    assert report.ok and codes(report) == set()
    assert report.resolved_device == "cuda:0"
    assert report.accelerator.free_memory_bytes == 70 * GIB
    assert {c.name: c.status for c in report.checks}["accelerator"] == "pass"


def test_preflight_one_gpu_total_enough_free_not(root: Path) -> None:
    gpus = [GpuSpec(UUID0, H100[0], H100[1], 1 * GIB)]
    report = report_for(root, FakeNvmlLib(gpus), fake_torch(cuda_devices(gpus)))
    assert not report.ok and codes(report) == {"accelerator.insufficient_vram"}
    assert "enough in total" in report.issues[0].message


@pytest.mark.parametrize("selector", ["1", UUID1, UUID1[:12]])
def test_preflight_two_gpus_cuda_visible_devices(root: Path, selector: str) -> None:
    gpus = [GpuSpec(UUID0, "GPU zero", 40 * GIB, 1 * GIB), GpuSpec(UUID1, "GPU one", 80 * GIB, 60 * GIB, pci_bus=0x28)]
    # torch only sees the visible GPU (physical 1) as cuda:0
    report = report_for(root, FakeNvmlLib(gpus), fake_torch([cuda_device(0, gpus[1])]), {"CUDA_VISIBLE_DEVICES": selector})
    assert report.ok and codes(report) == set()
    assert [(v.ordinal, v.nvml_index) for v in report.accelerator.visible] == [(0, 1)]
    assert report.accelerator.device_name == "GPU one"


def test_preflight_visible_devices_mapping_rules() -> None:
    from geno_pipeline.preflight.documents import MigInstance, NvmlDevice

    mig = MigInstance(uuid="MIG-1234abcd-0000-0000-0000-000000000000", gpu_instance_id=1, compute_instance_id=0, total_memory_bytes=1,
                      free_memory_bytes=1)  # fmt: skip
    shape = {"name": "g", "total_memory_bytes": 1, "free_memory_bytes": 1, "used_memory_bytes": 0, "compute_capability": "9.0"}
    devs = [
        NvmlDevice(index=i, uuid=u, mig_enabled=m, mig_instances=mi, pci_bus_id=bus, **shape)  # type: ignore[arg-type]
        for i, (u, m, mi, bus) in enumerate([(UUID0, False, [], "00000000:18:00.0"), (UUID1, True, [mig], "00000000:28:00.0")])
    ]
    assert [(v.ordinal, v.nvml_index) for v in map_visible_devices(None, devs)] == [(0, None), (1, None)]  # CUDA's order unknown
    assert [v.nvml_index for v in map_visible_devices(None, devs, "PCI_BUS_ID")] == [0, 1]
    assert [v.nvml_index for v in map_visible_devices("1,0", devs, "PCI_BUS_ID")] == [1, 0]
    assert [v.nvml_index for v in map_visible_devices("0,7,1", devs, "PCI_BUS_ID")] == [0]  # CUDA stops at an unknown entry
    assert [v.nvml_index for v in map_visible_devices(f"{UUID1},{UUID0}", devs)] == [1, 0]
    assert [v.nvml_index for v in map_visible_devices("", devs)] == []
    assert [v.nvml_index for v in map_visible_devices("-1", devs)] == []
    found = map_visible_devices("MIG-1234abcd", devs)
    assert [(v.nvml_index, v.mig_uuid) for v in found] == [(1, "MIG-1234abcd-0000-0000-0000-000000000000")]


def test_preflight_mig_enabled(root: Path) -> None:
    instance = MigSpec("MIG-aaaa0000-0000-0000-0000-000000000000", 1, 0, 40 * GIB, 39 * GIB)
    gpu = GpuSpec(UUID0, "NVIDIA A100", 80 * GIB, 70 * GIB, capability=(8, 0), mig=True, mig_devices=[instance])
    report = report_for(root, FakeNvmlLib([gpu]), fake_torch(cuda_devices([gpu])))  # an ordinal on the MIG-enabled GPU itself
    assert report.ok and codes(report) == {"accelerator.mig_enabled"}
    report = report_for(root, FakeNvmlLib([gpu]), fake_torch([cuda_device(0, instance, gpu)]), {"CUDA_VISIBLE_DEVICES": instance.uuid})
    assert report.ok and codes(report) == set() and report.accelerator.free_memory_bytes == 39 * GIB


def test_preflight_nvml_sees_gpu_torch_cannot(root: Path) -> None:
    report = report_for(root, FakeNvmlLib([GpuSpec(UUID0, H100[0], H100[1], 70 * GIB)]), fake_torch())
    assert not report.ok and codes(report) == {"accelerator.torch_cuda_unavailable"}


def test_preflight_device_count_mismatch_is_warning(root: Path) -> None:
    gpus = [GpuSpec(UUID0, "a", 40 * GIB, 30 * GIB), GpuSpec(UUID1, "b", 40 * GIB, 30 * GIB, pci_bus=0x28)]
    report = report_for(root, FakeNvmlLib(gpus), fake_torch([cuda_device(0, gpus[0])]))
    assert report.ok and codes(report) == {"accelerator.device_count_mismatch"}


def test_preflight_dependency_raising_at_import(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_dep_for_test.py").write_text("raise RuntimeError('libfoo.so: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = probe_dependency(DependencySpec("broken_dep_for_test", "pytest", True, "1.0"))
    assert not probe.available and "RuntimeError: libfoo.so" in probe.reason

    def deps(spec: DependencySpec):
        return (
            probe_dependency(DependencySpec("broken_dep_for_test", spec.package, spec.required, spec.minimum_version))
            if spec.import_name == "safetensors"
            else ok_dependency(spec)
        )

    report = report_for(root, None, fake_torch(), dependency_probe=deps)
    assert not report.ok and codes(report) == {"dependency.import_error"}
    assert report.issues[0].path == "safetensors"


def test_preflight_dependency_below_minimum(root: Path) -> None:
    def deps(spec: DependencySpec):
        if spec.import_name == "numpy":
            return probe_dependency(DependencySpec("numpy", "numpy", True, "999.0"))
        return ok_dependency(spec)

    report = report_for(root, None, fake_torch(), dependency_probe=deps)
    assert not report.ok and codes(report) == {"dependency.too_old"}
    assert "below the minimum 999.0" in report.issues[0].message


def test_preflight_probe_that_raises_becomes_issue(root: Path) -> None:
    def boom(rt: RuntimeParams, pf: PreflightParams):
        raise RuntimeError("kaboom")

    report = build_training_preflight_report(
        TrainingPreflightRequest.for_root(root), dependency_probe=ok_dependency, accelerator_probe=boom
    )
    assert not report.ok and codes(report) == {"preflight.probe_error"}
    assert "kaboom" in report.issues[0].message


def test_preflight_dataset_tampered_and_params_invalid(root: Path) -> None:
    data = root / "artifacts" / "dataset" / "valid_windows.npy"
    data.write_bytes(data.read_bytes()[:-1] + b"\x00")
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("batch_size: 8", "batch_size: -8"))
    report = report_for(root, None, fake_torch())
    assert not report.ok and codes(report) == {"dataset.checksum_mismatch", "params.invalid"}


def test_preflight_real_cpu_machine_defaults(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real probes with no GPU visible to CUDA (CUDA_VISIBLE_DEVICES="" hides every GPU, so this holds on a CUDA
    machine too): ok, device cpu, accelerator skip; report validates."""
    with gpu_environment({"CUDA_VISIBLE_DEVICES": ""}):
        assert main(["preflight", "--root", str(root)]) == 0
    report = json.loads((root / "reports" / "preflight.json").read_text())
    validate_document(report, "preflight_report")
    assert report["ok"] is True and report["resolved_device"] == "cpu"
    assert {c["name"]: c["status"] for c in report["checks"]}["accelerator"] == "skip"
    assert json.loads((root / "artifacts" / "preflight" / "environment.json").read_text())["device_kind"] == "cpu"
    out = capsys.readouterr().out
    assert "SKIP  accelerator" in out and "preflight: ok" in out


def test_preflight_what_if_writes_only_where_it_is_told(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`preflight --params X --output Y` reports on Y alone: the project's fingerprint and outcome, which train and
    release read, stay byte for byte as the project's own preflight wrote them."""
    with gpu_environment({"CUDA_VISIBLE_DEVICES": ""}):
        assert main(["preflight", "--root", str(root)]) == 0
    kept = {p.name: p.read_bytes() for p in (root / "artifacts" / "preflight").iterdir()}
    other = tmp_path / "other.yaml"
    other.write_text((root / "params.yaml").read_text().replace("cpu_threads: 1", "cpu_threads: 2"))
    capsys.readouterr()
    with gpu_environment({"CUDA_VISIBLE_DEVICES": ""}):
        assert main(["preflight", "--root", str(root), "--params", str(other), "--output", str(tmp_path / "what-if.json")]) == 0
    assert {p.name: p.read_bytes() for p in (root / "artifacts" / "preflight").iterdir()} == kept
    validate_document(json.loads((tmp_path / "what-if.json").read_text()), "preflight_report")
    assert f"report: {tmp_path / 'what-if.json'} (a what-if: artifacts/preflight/ unchanged)" in capsys.readouterr().out


def test_preflight_require_accelerator_exits_3(root: Path) -> None:
    write_params(root, runtime={"device": "auto"}, preflight={"require_accelerator": True})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for CUDA, on any machine
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "preflight", "--root", str(root)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((root / "reports" / "preflight.json").read_text())
    validate_document(report, "preflight_report")
    errors = [i for i in report["issues"] if i["severity"] == "error"]
    assert "accelerator.not_found" in {i["code"] for i in errors}
    # where NVML itself is absent too, that is an error once an accelerator is required
    assert {i["code"] for i in errors} <= {"accelerator.not_found", "nvml.library_not_found", "nvml.driver_not_loaded"}
    assert all(i["remedy"] for i in errors)


@pytest.mark.parametrize(("free", "ok"), [(2 * GIB, True), (2 * GIB - 1, False), (2 * GIB + 1, True)])
def test_preflight_vram_gate_boundary(root: Path, free: int, ok: bool) -> None:
    """preflight.min_vram_gib (2.0 in this profile) free is enough; one byte less is not."""
    gpus = [GpuSpec(UUID0, H100[0], H100[1], free)]
    report = report_for(root, FakeNvmlLib(gpus), fake_torch(cuda_devices(gpus)))
    assert report.ok is ok
    assert codes(report) == (set() if ok else {"accelerator.insufficient_vram"})


@pytest.mark.parametrize(
    ("load", "threads", "cores", "status", "slowdown"),
    [(0.1, 2, 2, "pass", None), (0.4, 2, 2, "pass", None), (0.6, 2, 2, "warn", 1.3), (4.0, 2, 2, "warn", 3.0), (4.0, 1, 2, "warn", 2.5),
     (3.0, 2, 8, "pass", None), (7.0, 2, 8, "warn", 1.1), (None, 2, 2, "skip", None)],
)  # fmt: skip
def test_cpu_busy_names_the_load_and_the_slowdown_to_expect(
    load: float | None, threads: int, cores: int, status: str, slowdown: float | None
) -> None:
    from geno_pipeline.config import RuntimeParams
    from geno_pipeline.preflight.checks.cpu import CpuCheck

    check = CpuCheck(RuntimeParams(cpu_threads=threads), load=lambda: load, cores=lambda: cores)
    facts = check.probe()
    assert (facts.cores, facts.load_1m, facts.threads) == (cores, load, threads)
    [finding] = check.assess(facts)
    assert finding.status == status
    if status == "warn":
        assert finding.code == "cpu.busy" and finding.severity == "warning"
        assert f"load average {load:.1f} over the last minute on {cores} core(s)" in finding.message
        assert f"expect training to take about {slowdown:.1f}x as long as on an idle machine" in finding.message
        assert "same bytes" in (finding.remedy or "")


def test_cpu_busy_is_in_the_report_and_not_in_the_outcome(tiny_dataset: Path) -> None:
    """A busy machine warns in reports/preflight.json, and the outcome (which release records) is the quiet machine's."""
    from geno_pipeline.preflight.runner import outcome_of

    def report(load: float):  # type: ignore[no-untyped-def]
        with no_nvml_library():
            return build_training_preflight_report(
                TrainingPreflightRequest.for_root(tiny_dataset), dependency_probe=ok_dependency,
                torch_process=FixedTorchProcess(cuda=fake_torch([])), cpu_load=lambda: load,
            )  # fmt: skip

    busy, quiet = report(6.0), report(0.0)
    validate_document(json.loads(busy.model_dump_json()), "preflight_report")
    assert {i.code: i.severity for i in busy.issues}.get("cpu.busy") == "warning" and busy.ok
    assert "cpu.busy" not in {i.code for i in quiet.issues}
    assert busy.cpu is not None and busy.cpu.load_1m == 6.0
    assert outcome_of(busy) == outcome_of(quiet)

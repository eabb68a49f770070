"""The memory budget: the parameter count against the real model, the estimate's monotonicity, the comparison with
the machine, the host-memory reader, and preflight's `memory` check on a CPU machine and on a (fake) GPU."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.config import CollapseParams, ModelParams, TrainParams
from geno_pipeline.hostmem import available_host_memory
from geno_pipeline.training.budget import GIB, MemoryEstimate, memory_shortfall, model_parameter_counts, train_memory
from geno_pipeline.training.model import build_world_model
from tests.conftest import write_params
from tests.test_gpu_preflight import gpu, issues, rows, run

SHAPE = {"window_length": 64, "slot_length": 96, "train_windows": 96, "valid_windows": 64}


def _train(**kw: object) -> TrainParams:
    model = {k: kw.pop(k) for k in list(kw) if k in ModelParams.model_fields}
    return TrainParams(steps=12, warmup_steps=2, **kw, model=ModelParams(**model))  # type: ignore[arg-type]


@given(
    state_dim=st.integers(2, 24), hidden_dim=st.integers(1, 40), conv_channels=st.integers(1, 12),
    kernel_size=st.sampled_from([1, 3, 5]), segments=st.sampled_from([1, 2, 4, 8]),
)  # fmt: skip
def test_parameter_counts_are_the_built_models(
    state_dim: int, hidden_dim: int, conv_channels: int, kernel_size: int, segments: int
) -> None:
    train = _train(state_dim=state_dim, hidden_dim=hidden_dim, conv_channels=conv_channels, kernel_size=kernel_size, segments=segments)
    model = build_world_model(window_length=64, params=train.model, encoder_seed=1, init_seed=2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    assert model_parameter_counts(train) == (trainable, buffers)


@given(
    batch=st.sampled_from([8, 64, 1024]), valid=st.sampled_from([2, 64, 4096]), hidden=st.sampled_from([8, 256, 4096]),
    workers=st.integers(1, 8), grow=st.sampled_from(["batch", "valid", "hidden", "workers"]),
)  # fmt: skip
def test_the_estimate_grows_with_every_size(batch: int, valid: int, hidden: int, workers: int, grow: str) -> None:
    def host(b: int, v: int, h: int, w: int) -> int:
        train = _train(batch_size=b, micro_batches=1, hidden_dim=h)
        return train_memory(train, CollapseParams(valid_batch_size=v), **SHAPE, workers_here=w).host  # type: ignore[arg-type]

    bigger = {"batch": (2 * batch, valid, hidden, workers), "valid": (batch, 2 * valid, hidden, workers),
              "hidden": (batch, valid, 2 * hidden, workers), "workers": (batch, valid, hidden, workers + 1)}[grow]  # fmt: skip
    assert host(*bigger) > host(batch, valid, hidden, workers)


def test_more_micro_batches_and_more_workers_in_the_job_need_less_per_worker() -> None:
    one = train_memory(_train(batch_size=4096, micro_batches=1), CollapseParams(), **SHAPE)  # type: ignore[arg-type]
    split = train_memory(_train(batch_size=4096, micro_batches=8), CollapseParams(), **SHAPE)  # type: ignore[arg-type]
    shared = train_memory(_train(batch_size=4096, micro_batches=8), CollapseParams(), **SHAPE, world_size=4)  # type: ignore[arg-type]
    assert one.per_worker > split.per_worker > shared.per_worker


def test_host_and_device_parts() -> None:
    estimate = MemoryEstimate(parts={"process": 10, "dataset": 20, "weights and optimizer": 300, "held-out batch": 4000}, workers=2,
                              device="cuda")  # fmt: skip
    assert (estimate.host, estimate.device_per_worker, estimate.per_worker) == (60, 4300, 4330)
    on_cpu = MemoryEstimate(parts=estimate.parts, workers=2, device="cpu")
    assert (on_cpu.host, on_cpu.device_per_worker) == (8660, 0)
    assert estimate.largest(2) == "held-out batch 0.0 GiB, weights and optimizer 0.0 GiB"


def test_shortfall_names_the_need_the_machine_and_the_largest_parts() -> None:
    estimate = MemoryEstimate(parts={"process": GIB, "batch activations": 30 * GIB}, workers=2, device="cpu")
    assert memory_shortfall(estimate, host_available=None) is None  # unknown: nothing to compare
    assert memory_shortfall(estimate, host_available=62 * GIB) is None
    assert memory_shortfall(estimate, host_available=61 * GIB) == (
        "training needs about 62.0 GiB of memory for 2 workers, but this machine has 61.0 GiB available "
        "(largest parts per worker: batch activations 30.0 GiB, process 1.0 GiB)"
    )
    gpu_run = MemoryEstimate(parts={"process": GIB, "batch activations": 30 * GIB}, workers=1, device="cuda")
    assert memory_shortfall(gpu_run, host_available=2 * GIB, device_free=31 * GIB) is None
    assert memory_shortfall(gpu_run, host_available=2 * GIB, device_free=29 * GIB) == (
        "training needs about 30.0 GiB of GPU memory per worker, but its GPU has 29.0 GiB free "
        "(largest parts: batch activations 30.0 GiB, process 1.0 GiB)"
    )


def test_available_host_memory_reads_meminfo_and_the_cgroup_limit(tmp_path: Path) -> None:
    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cg"
    cgroup.mkdir()
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    assert available_host_memory(meminfo, cgroup) == 2048 * 1024
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("1\n")
    assert available_host_memory(meminfo, cgroup) == 2048 * 1024
    (cgroup / "memory.max").write_text("1048576\n")
    (cgroup / "memory.current").write_text("24576\n")
    assert available_host_memory(meminfo, cgroup) == 1048576 - 24576
    meminfo.write_text("garbage")
    assert available_host_memory(meminfo, cgroup) == 1048576 - 24576
    assert available_host_memory(tmp_path / "none", tmp_path / "none") is None


def test_preflight_memory_check_on_a_gpu_reads_the_gpus_free_memory(tiny_dataset: Path) -> None:
    write_params(tiny_dataset, runtime={"device": "auto"})
    report, _ = run(tiny_dataset, [gpu()])
    assert rows(report)["memory"] == ("pass", None)
    assert report.memory is not None and report.memory.device == "cuda" and report.memory.device_free_bytes == 70 * GIB
    # a held-out batch of 2^20 tuples of 64-base windows with 4096 conv channels: far beyond the fake GPU's 70 GiB
    write_params(tiny_dataset, runtime={"device": "auto"}, collapse={"valid_batch_size": 1 << 20},
                 train={"model": {"state_dim": 16, "hidden_dim": 32, "conv_channels": 4096, "kernel_size": 5, "segments": 4,
                                  "residual": True}})  # fmt: skip
    report, _ = run(tiny_dataset, [gpu()])
    assert issues(report)["memory.insufficient"] == "error" and not report.ok
    issue = next(i for i in report.issues if i.code == "memory.insufficient")
    assert "GiB of GPU memory per worker, but its GPU has 70.0 GiB free (largest parts: held-out batch" in issue.message
    assert issue.path is not None and issue.path.endswith("params.yaml")

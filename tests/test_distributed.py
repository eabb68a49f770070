"""Distributed training: the batch split and ordered sums, job parsing, the launcher's verdicts, preflight's
`distributed.*` checks, ranks of real gloo groups stepping to the single process's bits, and the collective bench.
Whole launched jobs are in test_distributed_jobs.py."""

from __future__ import annotations

import inspect
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.config import RuntimeParams, TrainParams, load_params
from geno_pipeline.distributed import (
    job_from_env,
    launcher_problems,
    lazy_tree_sum,
    local_world_size,
    micro_batch_slices,
    ordered_sum,
    planned_world_size,
    port_is_free,
    rendezvous_port,
    resolve_backend,
    shard_range,
    tree_fits,
    tree_sum,
)
from geno_pipeline.distributed.group import shard_length
from geno_pipeline.distributed.launch import SHUTDOWN_GRACE_S, WorkerExit, _agent_class, _bounded_close, describe_exit, exit_code_of
from geno_pipeline.distributed.smoke import free_port, run_smoke_test
from geno_pipeline.errors import ConfigError, DistributedError
from geno_pipeline.preflight.checks.distributed import DistributedCheck
from geno_pipeline.preflight.documents import DistributedProbe, SmokeTest
from geno_pipeline.training.model import build_world_model
from geno_pipeline.training.trainer import (
    TorchTrainer,
    TorchTrainerBatch,
    build_adamw_optimizer,
    flat_grad,
    gaussian_kl,
    masked_prediction_loss,
)
from tests.conftest import job_env, write_params

# ---------------------------------------------------------------- the split and the sums


@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 6))
def test_distributed_shards_cover_the_micro_batches_in_order(per_rank: int, world: int, rows_per_micro: int) -> None:
    micro = per_rank * world
    slices = micro_batch_slices(micro * rows_per_micro, micro)
    order = [j for rank in range(world) for j in shard_range(micro, world, rank)]
    assert order == list(range(micro))  # rank order is micro-batch order: gathering by rank needs no reordering
    rows = [r for s in slices for r in range(s.start, s.stop)]
    assert rows == list(range(micro * rows_per_micro))
    assert {s.stop - s.start for s in slices} == {rows_per_micro}


def test_distributed_split_refuses_what_does_not_divide() -> None:
    with pytest.raises(ValueError, match="must divide"):
        shard_range(4, 3, 0)
    with pytest.raises(ValueError, match="divide batch_size"):
        micro_batch_slices(10, 4)
    with pytest.raises(ValueError, match="rank"):
        shard_range(4, 2, 2)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=12))
def test_distributed_ordered_sum_is_the_left_fold(values: list[float]) -> None:
    rows = torch.tensor(values, dtype=torch.float32).reshape(-1, 1)
    expected = torch.tensor([values[0]], dtype=torch.float32)
    for v in values[1:]:
        expected = expected + torch.tensor([v], dtype=torch.float32)
    assert ordered_sum(rows).numpy().tobytes() == expected.numpy().tobytes()
    assert ordered_sum(rows).shape == (1,)


_GRAD = st.sampled_from([0.0, -0.0, 1.0, -1.0, 3.5e-8, -(2.0**-149), 1e30, -7.25, 0.1, 1e-3, 3.0])


def _simulated_tree_reduce(partials: list[torch.Tensor]) -> torch.Tensor:
    """What `TorchGroup.tree_reduce` computes on W ranks: shard q of each partial to rank q, summed there along the
    tree in rank order, then the summed shards concatenated (at W = 2 an all-reduce: one addition, in either order,
    which `test_distributed_two_rank_all_reduce_is_the_tree_bit_for_bit` checks on gloo)."""
    world, numel = len(partials), partials[0].numel()
    if world == 2:
        return partials[1] + partials[0]  # commutative: the order an all-reduce adds in does not matter
    shard = shard_length(numel, world)
    padded = [torch.cat((p, torch.zeros(world * shard - numel, dtype=p.dtype))) for p in partials]
    mine = [tree_sum(torch.stack([padded[r][q * shard : (q + 1) * shard] for r in range(world)])) for q in range(world)]
    return torch.cat(mine)[:numel]


@given(
    st.sampled_from([1, 2, 4, 8]),
    st.integers(1, 4),
    st.integers(1, 7),
    st.data(),
)
def test_distributed_tree_reduction_over_any_power_of_two_world_is_the_single_process_tree(
    world: int, per_rank: int, numel: int, data: st.DataObject
) -> None:
    """W ranks of M = W * k micro-batches: each rank's own subtree sum (`lazy_tree_sum` over its contiguous block),
    combined shard by shard along the tree, equals the one-process tree sum of all M rows bit for bit, for signed zeros,
    subnormals and values whose sum depends on the order."""
    micro = world * per_rank
    assert tree_fits(micro, world)
    values = data.draw(st.lists(st.lists(_GRAD, min_size=numel, max_size=numel), min_size=micro, max_size=micro))
    rows = [torch.tensor(v, dtype=torch.float32) for v in values]
    partials = [lazy_tree_sum(per_rank, lambda i: rows[i], start=rank * per_rank) for rank in range(world)]
    assert _simulated_tree_reduce(partials).numpy().tobytes() == tree_sum(rows).numpy().tobytes()


_TWO_RANK_REDUCE = """
import os, sys, numpy as np, torch
from geno_pipeline.distributed import job_from_env
from geno_pipeline.distributed.group import joined
torch.set_num_threads(1)
values = np.load(sys.argv[1])
with joined(job_from_env(os.environ), backend="gloo", device="cpu", timeout_s=60) as group:
    out = group.tree_reduce(torch.from_numpy(values[group.rank]))
    np.save(sys.argv[2] + str(group.rank) + ".npy", out.numpy())
"""


def _all_succeed(procs: list[subprocess.Popen[str]], timeout: float = 120) -> None:
    """Wait for every process (stderr piped) and require exit 0 of each; none is left running, whatever happens."""
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-2000:]
    finally:
        for proc in procs:
            proc.kill()


def test_distributed_two_rank_all_reduce_is_the_tree_bit_for_bit(tmp_path: Path) -> None:
    """At W = 2 the partial sums are combined by gloo's all-reduce: for every ordered pair of special values (signed
    zeros, subnormals, the smallest normal, the largest finite, infinities) and a million random finite float32 bit
    patterns, both ranks get left + right, the tree's bits."""
    import numpy as np

    special = np.array([0.0, -0.0, 1.0, -1.0, 3.5e-8, -(2.0**-149), 2.0**-149, 2.0**-126, -(2.0**-126), 1e30, -7.25, 0.1,
                        np.finfo(np.float32).max, -np.finfo(np.float32).max, np.inf, -np.inf], dtype=np.float32)  # fmt: skip
    left, right = np.repeat(special, len(special)), np.tile(special, len(special))
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=(2, 1_000_000), dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits[~np.isfinite(bits)] = 1.0
    values = np.stack([np.concatenate((left, bits[0])), np.concatenate((right, bits[1]))])
    np.save(tmp_path / "values.npy", values)
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_RANK_REDUCE, str(tmp_path / "values.npy"), str(tmp_path / "out")],
            env=job_env() | {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    _all_succeed(procs)
    expected = tree_sum([torch.from_numpy(values[0]), torch.from_numpy(values[1])]).numpy()
    for rank in range(2):
        assert np.load(tmp_path / f"out{rank}.npy").tobytes() == expected.tobytes()


def test_distributed_tree_sum_is_the_balanced_tree_and_differs_from_the_left_fold() -> None:
    a, b, c, d = (torch.tensor([x], dtype=torch.float32) for x in (1e8, 1.0, -1e8, 1.0))
    assert tree_sum([a, b, c, d]).item() == ((a + b) + (c + d)).item()
    assert tree_sum([a, b, c]).item() == (a + (b + c)).item()  # split at half the count: 1 | 2
    assert ordered_sum(torch.stack([a, b, c, d])).item() != tree_sum([a, b, c, d]).item()  # the order is the point
    order: list[int] = []
    lazy_tree_sum(6, lambda i: (order.append(i), torch.zeros(1))[1])
    assert order == list(range(6))  # leaves are computed in micro-batch order, each once
    assert [tree_fits(m, w) for m, w in ((4, 4), (8, 2), (6, 2), (12, 4), (6, 3), (4, 8), (3, 1))] == [
        True, True, True, True, False, False, True]  # fmt: skip
    with pytest.raises(ValueError, match="at least one leaf"):
        tree_sum([])


def _batch(seed: int, b: int, k: int, d: int, actions: int) -> TorchTrainerBatch:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, k + 1, (b,), generator=gen)
    mask = torch.arange(k)[None, :] < lengths[:, None]
    return TorchTrainerBatch(
        state=torch.randn(b, d, generator=gen, dtype=torch.float64),
        target=torch.randn(b, k, d, generator=gen, dtype=torch.float64),
        actions=torch.randn(b, k, actions, generator=gen, dtype=torch.float64) * mask[..., None],
        action_mask=mask,
        rel_edits=tuple(() for _ in range(b)),
        window_ids=tuple(str(i) for i in range(b)),
    )


def _rows(batch: TorchTrainerBatch, rows: slice) -> TorchTrainerBatch:
    return TorchTrainerBatch(batch.state[rows], batch.target[rows], batch.actions[rows], batch.action_mask[rows], (), ())


@pytest.mark.parametrize(
    ("micro", "empty_first", "clip"),
    [(1, False, 1e9), (2, False, 1e9), (4, False, 1e9), (8, False, 1e9), (4, True, 1e9), (1, False, 1e-3), (4, False, 1e-3),
     (8, False, 1e-3), (4, True, 1e-3)],
)  # fmt: skip
def test_distributed_micro_batch_gradient_is_the_global_batch_gradient(micro: int, empty_first: bool, clip: float) -> None:
    """The micro-batch surrogate (prediction loss over the global count + the global KL's first-order share) has the
    gradient of the whole batch's loss, KL term included, for any split (and with a micro-batch that has no real
    rollout step); checked in float64 against plain autograd. With a clip norm far below the gradient's, the applied
    gradient is the whole batch's gradient clipped once, globally (clipping each micro-batch's gradient before the sum
    gives another direction and norm)."""
    train = TrainParams(steps=10, warmup_steps=1, batch_size=8, micro_batches=micro, kl_weight=0.5, grad_clip_norm=clip)
    model = build_world_model(window_length=64, params=train.model.model_copy(update={"segments": 4}), encoder_seed=1, init_seed=2)
    model = model.double()
    from geno_pipeline.data.edits import ACTION_FEATURES

    batch = _batch(3, 8, 3, train.model.state_dim, ACTION_FEATURES)
    if empty_first:  # the first micro-batch's rows have no real step: its statistics row is zeros
        mask = batch.action_mask.clone()
        mask[: 8 // micro] = False
        batch = TorchTrainerBatch(batch.state, batch.target, batch.actions * mask[..., None], mask, batch.rel_edits, batch.window_ids)
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    params = [p for g in opt.param_groups for p in g["params"]]

    pred = model.rollout(batch.state, batch.actions)
    whole = masked_prediction_loss(pred, batch.target, batch.action_mask) + train.kl_weight * gaussian_kl(pred, batch.action_mask)
    opt.zero_grad()
    whole.backward()
    expected = flat_grad(params).clone()

    trainer = TorchTrainer(predictor=model.predictor, action_encoder=model.action_encoder, optimizer=opt, config=train, total_steps=10)
    trainer.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]  # keep the weights: compare the gradient only
    slices = micro_batch_slices(8, micro)
    result = trainer.train_step([_rows(batch, s) for s in slices], step=1, action_count=int(batch.action_mask.sum()))
    norm = float(expected.norm())
    assert result.grad_norm == pytest.approx(norm, rel=1e-9)  # the norm before clipping, of the summed gradient
    if clip < norm:
        expected = expected * (clip / (norm + 1e-6))  # torch's clip_grad_norm_: max_norm / (total_norm + 1e-6)
        assert float(flat_grad(params).norm()) == pytest.approx(clip, rel=1e-4)
    assert torch.allclose(flat_grad(params), expected, rtol=1e-9, atol=1e-12)
    assert result.loss == pytest.approx(float(whole.detach()), rel=1e-12)


_RANK_STEP = """
import os, sys, numpy as np, torch
from geno_pipeline.config import ModelParams, TrainParams
from geno_pipeline.data.edits import ACTION_FEATURES
from geno_pipeline.distributed import job_from_env, micro_batch_slices, shard_range
from geno_pipeline.distributed.group import joined
from geno_pipeline.training.model import build_world_model
from geno_pipeline.training.trainer import TorchTrainer, TorchTrainerBatch, build_adamw_optimizer
torch.set_num_threads(1)
micro, out = int(sys.argv[1]), sys.argv[2]
model_params = ModelParams(state_dim=8, hidden_dim=16, conv_channels=4, kernel_size=3, segments=4)
train = TrainParams(steps=10, warmup_steps=1, batch_size=16, micro_batches=micro, kl_weight=0.5, grad_clip_norm=0.05, model=model_params)
gen = torch.Generator().manual_seed(3)
lengths = torch.randint(1, 4, (16,), generator=gen)
mask = torch.arange(3)[None, :] < lengths[:, None]
state, target = 3 * torch.randn(16, 8, generator=gen), 3 * torch.randn(16, 3, 8, generator=gen)
actions = torch.randn(16, 3, ACTION_FEATURES, generator=gen) * mask[..., None]
with joined(job_from_env(os.environ), backend="gloo", device="cpu", timeout_s=60) as group:
    for reduction in ("tree", "gather"):
        model = build_world_model(window_length=16, params=model_params, encoder_seed=1, init_seed=2)
        opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
        trainer = TorchTrainer(predictor=model.predictor, action_encoder=model.action_encoder, optimizer=opt, config=train,
                               total_steps=10, group=group, reduction=reduction)
        slices = micro_batch_slices(16, micro)
        mine = [slices[j] for j in shard_range(micro, group.size, group.rank)]
        result = trainer.train_step([TorchTrainerBatch(state[s], target[s], actions[s], mask[s], (), ()) for s in mine], step=1,
                                    action_count=int(mask.sum()))
        weights = torch.cat([p.detach().reshape(-1) for g in opt.param_groups for p in g["params"]]).numpy()
        np.save(f"{out}-{reduction}-{group.rank}.npy", np.concatenate([weights.view(np.uint32).astype(np.float64),
                                                                       [result.loss, result.grad_norm]]))
"""


@pytest.mark.parametrize(("world", "micro"), [pytest.param(4, 8, marks=pytest.mark.slow), (2, 8)])
def test_distributed_every_rank_steps_to_the_single_process_bits(tmp_path: Path, world: int, micro: int) -> None:
    """Every rank of a gloo job ends the step with the single process's weights, loss and gradient norm, bit for bit, by
    the tree reduction and by the gather, with 8 micro-batches (a sum of two terms is the same in either order;
    more show a rank that puts its own rows first) and the clip binding; each rank's result is checked, not rank 0's."""
    port = str(free_port())
    job = {"WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    script = [sys.executable, "-c", _RANK_STEP, str(micro)]
    procs = [subprocess.Popen([*script, str(tmp_path / "single")], env=job_env(), stderr=subprocess.PIPE, text=True)]
    procs += [
        subprocess.Popen([*script, str(tmp_path / "rank")], env=job_env() | job | {"RANK": str(r), "LOCAL_RANK": str(r)},
                         stderr=subprocess.PIPE, text=True)
        for r in range(world)
    ]  # fmt: skip
    _all_succeed(procs)
    for reduction in ("tree", "gather"):
        single = np.load(tmp_path / f"single-{reduction}-0.npy")
        assert single[-1] > 0.05 * 10  # the clip binds
        for rank in range(world):
            assert np.load(tmp_path / f"rank-{reduction}-{rank}.npy").tobytes() == single.tobytes(), (reduction, rank)


# ---------------------------------------------------------------- params, job and launcher verdicts


def test_distributed_params_refuse_a_world_that_does_not_divide_the_micro_batches(tiny_root: Path) -> None:
    write_params(tiny_root, runtime={"nproc_per_node": 4})  # tiny: micro_batches 2
    with pytest.raises(ConfigError, match=r"runtime\.nproc_per_node = 4: does not divide train\.micro_batches \(2\)"):
        load_params(tiny_root / "params.yaml")
    write_params(tiny_root, train={"micro_batches": 3})
    with pytest.raises(ConfigError, match=r"train\.micro_batches = 3: must divide batch_size \(8\)"):
        load_params(tiny_root / "params.yaml")
    with pytest.raises(ValueError, match="names one CUDA device"):
        RuntimeParams(device="cuda:1", nproc_per_node=2)
    with pytest.raises(ValueError, match="NCCL needs CUDA devices"):
        RuntimeParams(device="cpu", dist_backend="nccl")


def test_distributed_job_fromjob_env() -> None:
    assert job_from_env({}) is None
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29501"}
    job = job_from_env(env)
    assert job is not None and (job.rank, job.world_size, job.local_rank, job.master_port) == (1, 2, 1, 29501)
    with pytest.raises(DistributedError, match="lacks MASTER_ADDR, MASTER_PORT"):
        job_from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(DistributedError, match="RANK=2, WORLD_SIZE=2"):
        job_from_env(env | {"RANK": "2"})
    with pytest.raises(DistributedError, match="WORLD_SIZE='two' is not an integer"):
        job_from_env(env | {"WORLD_SIZE": "two"})
    assert planned_world_size(2, {}) == 2 and planned_world_size(2, {"WORLD_SIZE": "8"}) == 8
    assert rendezvous_port({}) == 29500 and rendezvous_port({"MASTER_PORT": "1234"}) == 1234
    with pytest.raises(DistributedError, match="not a TCP port"):
        rendezvous_port({"MASTER_PORT": "70000"})
    assert resolve_backend("auto", "cpu") == "gloo" and resolve_backend("auto", "cuda:0") == "nccl"


def test_distributed_launcher_verdicts() -> None:
    killed, stopped = WorkerExit(1, 11, -signal.SIGKILL), WorkerExit(0, 10, -signal.SIGTERM)
    assert describe_exit(killed) == "worker rank 1 (pid 11): killed by SIGKILL"
    assert describe_exit(stopped) == "worker rank 0 (pid 10): stopped by the launcher (SIGTERM)"
    assert exit_code_of([killed, stopped]) == 9
    assert exit_code_of([WorkerExit(0, 10, 5), WorkerExit(1, 11, 5)]) == 5  # both refused the checkpoint
    assert exit_code_of([WorkerExit(0, 10, 9), WorkerExit(1, 11, -9)]) == 9


def test_distributed_the_workers_left_by_a_failed_one_get_the_launchers_grace() -> None:
    """torch's process context stops a failed job's other workers with `close()` and its fixed 30 s grace; the
    launcher's agent bounds every close by its own grace. The hung-worker job test shows the effect; this pins the
    torch names it relies on, so an upgrade that moves them fails here."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.api import PContext, SubprocessContext
    from torch.distributed.launcher import api

    assert "LocalElasticAgent(" in inspect.getsource(api.launch_agent)  # the name launch_workers points at its agent
    assert "self._pcontext = start_processes(" in inspect.getsource(LocalElasticAgent._start_workers)
    assert "self.close()" in inspect.getsource(SubprocessContext._poll)
    assert inspect.signature(PContext.close).parameters["timeout"].default == 30
    closed: list[tuple[object, int]] = []
    bounded = _bounded_close(lambda sig, timeout: closed.append((sig, timeout)), SHUTDOWN_GRACE_S)
    bounded()
    bounded(signal.SIGTERM, 30)
    bounded(signal.SIGINT, 2)
    assert closed == [(None, 5), (signal.SIGTERM, 5), (signal.SIGINT, 2)]
    assert issubclass(_agent_class(LocalElasticAgent), LocalElasticAgent)


def test_distributed_an_nccl_watchdog_abort_names_the_rank_and_the_timeout() -> None:
    """NCCL ends a worker whose collective timed out with SIGABRT from its watchdog thread (the default
    TORCH_NCCL_ASYNC_ERROR_HANDLING=3): the launcher's line names the rank, the timeout and where NCCL's own line is."""
    aborted = WorkerExit(1, 11, -signal.SIGABRT)
    words = describe_exit(aborted, backend="nccl", timeout_s=300)
    assert words.startswith("worker rank 1 (pid 11): aborted (SIGABRT); on NCCL this is the watchdog ending a worker whose ")
    assert "collective ran past runtime.dist_timeout_s (300 s) or failed" in words and "[rank1]" in words
    assert describe_exit(aborted, backend="auto", timeout_s=5) != describe_exit(aborted, backend="gloo", timeout_s=5)
    assert describe_exit(aborted, backend="gloo") == "worker rank 1 (pid 11): killed by SIGABRT"
    assert exit_code_of([aborted, WorkerExit(0, 10, -signal.SIGTERM)]) == 9


# ---------------------------------------------------------------- preflight


def _facts(**changes: object) -> DistributedProbe:
    base = DistributedProbe(
        world_size=2, nproc_per_node=2, backend="gloo", backend_available=True, device="cpu", devices_visible=0, cpu_cores=2,
        cpu_threads_per_worker=1, port=29500, port_free=True,
        smoke=SmokeTest(ran=True, ok=True, seconds=1.5, timeout_s=60.0, error=None),
    )  # fmt: skip
    return base.model_copy(update=changes)


def _codes(facts: DistributedProbe) -> dict[str, str]:
    check = DistributedCheck(RuntimeParams(nproc_per_node=2), accelerator=None, probe_fn=None)  # type: ignore[arg-type]
    return {f.check: f.code or f.status for f in check.assess(facts)}


def test_distributed_preflight_codes() -> None:
    assert _codes(_facts()) == {n: "pass" for n in ("distributed.backend", "distributed.devices", "distributed.port", "distributed.smoke")}
    assert _codes(_facts(backend="nccl", backend_available=False))["distributed.backend"] == "distributed.backend_unavailable"
    cuda = _codes(_facts(backend="nccl", device="cuda", devices_visible=1))
    assert cuda["distributed.devices"] == "distributed.not_enough_devices"
    assert _codes(_facts(cpu_threads_per_worker=2))["distributed.devices"] == "distributed.cpu_oversubscribed"
    assert _codes(_facts(port_free=False))["distributed.port"] == "distributed.port_in_use"
    assert _codes(_facts(port=None, port_free=None))["distributed.port"] == "skip"
    failed = SmokeTest(ran=True, ok=False, seconds=60.0, timeout_s=60.0, error="no result within 60 s")
    assert _codes(_facts(smoke=failed))["distributed.smoke"] == "distributed.smoke_failed"


def test_distributed_preflight_checks_micro_batches_against_the_launchers_world_size(tiny_root: Path) -> None:
    """Under a launcher (WORLD_SIZE set, nproc_per_node 1 on each node) the split is checked against WORLD_SIZE."""
    from geno_pipeline.config import LoadedParams
    from geno_pipeline.preflight.checks.params import ParamsCheck

    loaded = LoadedParams.read(write_params(tiny_root))  # tiny: micro_batches 2, nproc_per_node 1
    for environ, verdict in (({}, "pass"), ({"WORLD_SIZE": "2"}, "pass"), ({"WORLD_SIZE": "4"}, "fail")):
        (finding,) = ParamsCheck(loaded, environ=environ).assess(loaded)
        assert finding.status == verdict, environ
    (finding,) = ParamsCheck(loaded, environ={"WORLD_SIZE": "4"}).assess(loaded)
    assert (finding.code, finding.path) == ("params.invalid", "WORLD_SIZE")
    assert (
        finding.message
        == "WORLD_SIZE=4 (the launcher's) does not divide train.micro_batches (2); every worker takes the same number of micro-batches"
    )


@given(st.integers(1, 16), st.one_of(st.none(), st.integers(1, 64)), st.one_of(st.none(), st.integers(1, 64)))
def test_distributed_local_world_size_is_the_nodes_share(nproc: int, world: int | None, local: int | None) -> None:
    """LOCAL_WORLD_SIZE when set, else a launcher's WORLD_SIZE (one node), else runtime.nproc_per_node; preflight
    refuses a node share larger than the job."""
    env = {k: str(v) for k, v in (("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", local)) if v is not None}
    expected = local if local is not None else world if world is not None else nproc
    assert local_world_size(nproc, env) == expected
    too_big = world is not None and local is not None and local > world
    assert [p[0] for p in launcher_problems(env)] == (["LOCAL_WORLD_SIZE"] if too_big else [])


def test_distributed_preflight_refuses_launcher_variables_that_describe_no_job(tiny_root: Path) -> None:
    from geno_pipeline.config import LoadedParams
    from geno_pipeline.preflight.checks.params import ParamsCheck

    loaded = LoadedParams.read(write_params(tiny_root))
    cases = {
        "WORLD_SIZE": ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' (the launcher's) is not a positive integer"),
        "LOCAL_WORLD_SIZE": (
            {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"},
            "LOCAL_WORLD_SIZE='4' (the launcher's) is more than WORLD_SIZE (2)",
        ),
    }  # fmt: skip
    for key, (environ, message) in cases.items():
        (finding,) = ParamsCheck(loaded, environ=environ).assess(loaded)
        assert (finding.status, finding.code, finding.path, finding.message) == ("fail", "params.invalid", key, message)
    assert launcher_problems({"WORLD_SIZE": "0"})[0][:2] == ("WORLD_SIZE", "0")


class _OtherRankBlind:
    """Rank 0 of a 2-rank job whose rank 1 reports what `seen_by_rank_1` says (its node may not share the folder)."""

    rank, size, backend = 0, 2, "gloo"

    def __init__(self, seen_by_rank_1: float) -> None:
        self.seen_by_rank_1 = seen_by_rank_1

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat((rows, torch.full_like(rows, self.seen_by_rank_1)))


def test_distributed_resume_needs_the_checkpoint_on_every_rank(tmp_path: Path) -> None:
    """A rank that cannot see rank 0's checkpoint (no shared filesystem) stops the whole job with one message naming it,
    before any rank loads anything."""
    from geno_pipeline.training.stage import require_visible_everywhere

    checkpoint = tmp_path / "artifacts/train/checkpoints/step-000050"
    checkpoint.mkdir(parents=True)
    (checkpoint / "SHA256SUMS").write_text("")
    require_visible_everywhere(_OtherRankBlind(1.0), checkpoint, "artifacts/train/checkpoints/step-000050")  # type: ignore[arg-type]
    with pytest.raises(DistributedError, match=r"^rank\(s\) 1 of 2 cannot see artifacts/train/checkpoints/step-000050, the checkpoint "
                                               r"the job resumes from: their nodes do not share the project folder; fix: "):  # fmt: skip
        require_visible_everywhere(_OtherRankBlind(0.0), checkpoint, "artifacts/train/checkpoints/step-000050")  # type: ignore[arg-type]
    (checkpoint / "SHA256SUMS").unlink()  # an incomplete folder is not a checkpoint either
    with pytest.raises(DistributedError, match=r"^rank\(s\) 0, 1 of 2 cannot see"):
        require_visible_everywhere(_OtherRankBlind(0.0), checkpoint, "artifacts/train/checkpoints/step-000050")  # type: ignore[arg-type]


def test_distributed_fingerprint_fix_names_the_launchers_world_size() -> None:
    from geno_pipeline.environment import build_fingerprint
    from geno_pipeline.training.stage import fingerprint_fix

    runtime = RuntimeParams(nproc_per_node=1)
    plain = build_fingerprint(runtime, device_kind="cpu", world_size=1, tf32=False, cpu_class="x/AVX2")
    launched = build_fingerprint(runtime, device_kind="cpu", world_size=2, tf32=False, cpu_class="x/AVX2")
    assert fingerprint_fix(plain, launched) == (
        "rerun preflight with the launcher's world size, on each node: `WORLD_SIZE=2 geno-pipeline preflight`"
    )
    other_cpu = build_fingerprint(runtime, device_kind="cpu", world_size=1, tf32=False, cpu_class="y/AVX512")
    assert fingerprint_fix(plain, other_cpu) == "rerun `geno-pipeline preflight`"


def test_distributed_preflight_smoke_is_bounded_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short runtime.dist_timeout_s (5 s) bounds training's collectives, not preflight's smoke test, whose two fresh
    interpreters import torch first: on a loaded machine that alone can take longer."""
    from geno_pipeline.distributed import smoke
    from geno_pipeline.distributed.smoke import SmokeResult
    from geno_pipeline.preflight.checks.distributed import SMOKE_TIMEOUT_S, probe_distributed
    from tests.fakes import fake_torch

    bounds: list[float] = []
    monkeypatch.setattr(smoke, "run_smoke_test", lambda backend, *, timeout_s: (bounds.append(timeout_s), SmokeResult(True, 1.0, None))[1])
    accelerator = type("A", (), {"resolved_device": "cpu", "torch": fake_torch()})()
    probe = probe_distributed(RuntimeParams(nproc_per_node=2, dist_timeout_s=5), accelerator)  # type: ignore[arg-type]
    assert bounds == [SMOKE_TIMEOUT_S] == [60.0] and probe.smoke.timeout_s == 60.0 and probe.smoke.ok


def test_distributed_preflight_real_probes() -> None:
    result = run_smoke_test("gloo", timeout_s=60)
    assert result.ok and result.error is None
    port = free_port()
    assert port_is_free(port)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)


def test_bench_stops_hung_benchwork_workers_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchwork job that does not finish in time (here: a limit it cannot meet) is one clear error, and none of its
    worker processes is left running."""
    from geno_pipeline.errors import DistributedError
    from tools import bench

    started: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(bench, "BENCHWORK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(subprocess, "Popen", popen)
    hung = r"benchwork ddp x2 did not finish in 0.5 s \(rank 0 at .*; rank 1 at .*\).*processes were stopped"
    with pytest.raises(DistributedError, match=hung):
        bench._benchwork("ddp", 2, 1, 100, tmp_path / "w.npy")
    assert len(started) == 2 and all(p.poll() is not None for p in started)


def test_bench_says_which_benchwork_worker_failed_and_how(tmp_path: Path) -> None:
    """A benchwork worker that exits with an error (here: a mode it does not know) is one DistributedError naming the rank,
    its exit status and the last line it wrote, not a traceback."""
    from geno_pipeline.errors import DistributedError
    from tools import bench

    with pytest.raises(
        DistributedError, match=r"benchwork nosuchmode x1 failed \(rank 0 exited with status 2: .*invalid choice: 'nosuchmode'"
    ):
        bench._benchwork("nosuchmode", 1, 1, 1, tmp_path / "w.npy")
    assert not (tmp_path / "w.npy").exists()


def test_innermost_frame_names_where_a_signalled_worker_was() -> None:
    """A process that registers SIGUSR1 with faulthandler, as benchwork does, and waits in a function: the frame the bench
    reports is that function's line; a dump without the signalled thread's frames says so."""
    from tools.bench import innermost_frame

    code = (
        "import faulthandler, signal, sys, time\n"
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "def waiting():\n"
        "    print('ready', flush=True); time.sleep(60)\n"  # one line: signalled before or in the sleep, the frame is this one
        "waiting()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dump = b""
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGUSR1)
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while b"in waiting" not in dump and time.monotonic() < deadline:  # the dump, as faulthandler writes it
            if select.select([proc.stderr], [], [], 1.0)[0]:
                dump += os.read(proc.stderr.fileno(), 65536)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    err = dump.decode()
    assert innermost_frame(err) == 'File "<string>", line 4 in waiting'
    assert innermost_frame("") == "no stack (it was still starting)"
    assert innermost_frame("Current thread 0x1 (most recent call first):\n  <no Python frame>\n") == "<no Python frame>"


@pytest.mark.slow
def test_bench_counts_the_bytes_of_the_tree_the_all_gather_and_ddp(tmp_path: Path) -> None:
    """The bench's traffic line at 2 workers, 4 micro-batches: the tree receives what a ring all-reduce does (plus the
    two statistic gathers), the all-gather (M - M/W) gradients, DDP hands one gradient to all-reduce per step; the
    loopback interface carried about as much; and the all-gather path trains the same bits as the tree."""
    from tools.bench import bench_traffic

    figures, same = bench_traffic(2, tmp_path, steps=2)
    gradient = figures.gradient_bytes
    assert gradient == 245_312 * 4 and figures.ring_bytes == gradient  # 2(W-1)/W = 1 at W = 2
    assert gradient <= figures.tree_received_bytes <= 1.01 * gradient
    assert 2 * gradient <= figures.gather_received_bytes <= 1.01 * 2 * gradient  # (4 - 4/2) gradients
    assert figures.ddp_allreduce_bytes == gradient
    if figures.tree_loopback_bytes is not None:  # Linux: the wire agrees with the counters within headers and setup
        assert figures.tree_loopback_bytes == pytest.approx(figures.tree_received_bytes, rel=0.05)
        assert figures.gather_loopback_bytes == pytest.approx(figures.gather_received_bytes, rel=0.05)
        assert figures.ddp_loopback_bytes == pytest.approx(figures.ring_bytes, rel=0.05)
    assert same


def test_loopback_bytes_reads_the_lo_line(tmp_path: Path) -> None:
    from tools.benchwork import loopback_bytes

    dev = tmp_path / "dev"
    dev.write_text(
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n"
        "  eth0: 999 1 0 0 0 0 0 0 999 1\n"
        "    lo: 123456 78 0 0 0 0 0 0 123456 78\n",
        encoding="ascii",
    )
    assert loopback_bytes(str(dev)) == 123456
    assert loopback_bytes(str(tmp_path / "missing")) is None
    dev.write_text("  eth0: 1 2 3\n", encoding="ascii")
    assert loopback_bytes(str(dev)) is None


def test_trainer_refuses_an_unknown_reduction() -> None:
    model = build_world_model(window_length=16, params=TrainParams().model, encoder_seed=1, init_seed=2)
    config = TrainParams(steps=2, warmup_steps=1, batch_size=4)
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=config)
    with pytest.raises(ValueError, match="reduction 'ring' is not one of tree, gather"):
        TorchTrainer(
            predictor=model.predictor, action_encoder=model.action_encoder, optimizer=opt, config=config, total_steps=2,
            reduction="ring",  # type: ignore[arg-type]
        )  # fmt: skip

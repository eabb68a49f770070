"""The train stage as a user waits for it, against a bare end-to-end torch loop; and the scaling curves (`bench --scaling`).

`bench_train_stage` times `run` of the train stage in this process (setup, sampling, encoding, steps, logs, held-out
evaluation, checkpoints, reports) and a bare loop of the same sampling, encoding and optimizer math with none of the
rest, on a dataset built beforehand; the loop's per-part seconds come from the stage's own facts. It also times, alone,
the held-out evaluations and durable checkpoint writes the profile's cadence requires (`required_work_seconds`): work the
bare loop leaves out that no overhead removal can, so `floor_ratio` is the least ratio reachable with it on the training
path.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from geno_pipeline.documents import Document
from geno_pipeline.fsio import atomic_write_text, fsync_dir
from geno_pipeline.layout import Layout

__all__ = [
    "ScalingCurve",
    "ScalingReport",
    "StageBench",
    "bare_update",
    "bench_train_stage",
    "cadence",
    "fit_growth",
    "median_seconds",
    "pair_ratios",
    "required_work_seconds",
    "run_scaling",
    "seconds",
    "tiny_and_default_profiles",
]

TARGET_RATIO = 1.10


class StageBench(Document):
    """The whole train stage (in-process) against a bare end-to-end loop of the same math."""

    profile: str
    """Params profile: tiny (tests/params_tiny.yaml) or default (params.yaml)."""
    steps: int
    """Training steps per run."""
    repeats: int
    """Alternate runs of each; medians are reported."""
    ours_s: float
    """Wall seconds of the train stage's `run` (dataset built beforehand)."""
    bare_s: float
    """Wall seconds of the bare loop: load the windows, build model and optimizer, then per step draw, encode, update."""
    ratio: float
    """ours_s / bare_s; the target is at most 1.10."""
    meets_target: bool
    """ratio <= 1.10."""
    pair_ratios: list[float]
    """ours / bare of each alternate pair, in run order: how far one pair can stray on this machine. The ratio of the
    medians always lies between their least and greatest."""
    parts: dict[str, float]
    """The stage's seconds by part (median run): setup, sampling, encoding, step, logs, evaluation, checkpoint, finish."""
    writer: str
    """The checkpoint writer the stage used: ProcessWriter (Linux) or ThreadWriter."""
    writer_s: float
    """Seconds the checkpoint writer ran its jobs (median run): beside the loop, so not one of `parts`. On Linux it is a
    forked process on another core; elsewhere a thread, whose Python shares the GIL with the loop and slows its parts
    (see training/background.py)."""
    evaluations: int
    """Held-out evaluations a run of the profile makes (step 0, every collapse.log_every_steps-th step and the last)."""
    checkpoints: int
    """Checkpoints a run of the profile writes (every train.checkpoint_every_steps-th step and the last)."""
    required_s: float
    """Median seconds those evaluations (with collapse metrics) and durable checkpoint writes take alone (the run's
    checkpoint bytes, each file synced, the directory renamed into place and synced): work the bare loop leaves out."""
    floor_ratio: float
    """(bare_s + required_s) / bare_s: the least ratio reachable if that work ran on the training thread. The stage's
    evaluations do; its checkpoint writes run in the writer (a process on Linux), so the stage can go below it."""
    cpu_threads: int = 2
    """runtime.cpu_threads of the runs."""
    prefetch: bool = False
    """The stage prepared the next steps' batches on a worker thread (train --prefetch)."""
    input_wait_ms_per_step: float | None = None
    """Milliseconds per step the stage's training thread waited for its input (median run): sampling and encoding
    without prefetch, what the prefetch thread had not finished in time with it."""


class ScalingCurve(Document):
    """One cost measured at growing sizes, and the power law fitted to it."""

    name: str
    """What grows and what is measured, e.g. train_step_vs_batch_size."""
    csv: str
    """The CSV under reports/bench/ (a DVC plot)."""
    x: str
    """Column of the size."""
    y: str
    """Column of the cost."""
    exponent: float
    """b in cost ~ a * size^b, least squares on log-log over every size (1: linear)."""
    exponent_largest: float
    """The same fit over the three largest sizes only, where fixed costs (process start, imports) weigh least."""
    growth: str
    """exponent_largest in words: sublinear (< 0.85), linear or superlinear (> 1.15)."""


class ScalingReport(Document):
    """reports/bench/scaling.json: `python -m tools.bench --scaling`."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    quick: bool
    """Fewer and smaller sizes."""
    curves: list[ScalingCurve]
    """Each measured curve and its fitted growth."""


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of `fn`."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn`."""
    return statistics.median(seconds(fn) for _ in range(repeats))


def _params_with(path: Path, **train: Any) -> Any:
    from geno_pipeline.config import load_params

    params = load_params(path)
    return params.model_copy(update={"train": params.train.model_copy(update=train)}) if train else params


def _prepare(root: Path, params: Any) -> Layout:
    """A scratch project under `root` with the profile's dataset built."""
    from geno_pipeline.data.dataset import build_dataset

    layout = Layout.for_root(root)
    build_dataset(params.data, root=root, out_dir=layout.dataset_dir)
    return layout


def _bare_loop(params: Any, layout: Layout) -> Any:
    """What training must do and nothing else: windows, model, optimizer, the sources' states when the stage caches them,
    then per step draw -> encode -> update; returns the trained model."""

    from geno_pipeline.data.dataset import load_dataset
    from geno_pipeline.distributed import micro_batch_slices
    from geno_pipeline.environment import torch_training_device
    from geno_pipeline.training.heldout import encode_batch
    from geno_pipeline.training.model import build_world_model
    from geno_pipeline.training.sampling import edit_type_weights_from_mapping, rollout_mix_from_mapping
    from geno_pipeline.training.seeds import TrainerSeeds
    from geno_pipeline.training.stage import source_states
    from geno_pipeline.training.trainer import build_adamw_optimizer
    from geno_pipeline.training.tuples import TupleSampler, take_rows

    train = params.train
    dataset = load_dataset(layout.dataset_dir)
    device, _ = torch_training_device(params.runtime.device)
    seeds = TrainerSeeds.from_base(train.seed)
    window = dataset.manifest.counts.window_length
    model = build_world_model(window_length=window, params=train.model, encoder_seed=seeds.encoder, init_seed=seeds.model_init)
    model = model.to(device)
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    weights, mix = edit_type_weights_from_mapping(train.edit_type_weights), rollout_mix_from_mapping(train.rollout_step_mix)
    sampler = TupleSampler(seeds.sampler, window_length=window, weights=weights, mix=mix)
    slices = micro_batch_slices(train.batch_size, train.micro_batches)
    sources = source_states(model, dataset, train, device)  # the stage's encoding: each window once when that is less work
    for step in range(1, train.steps + 1):
        batch = sampler.draw(dataset.train, train.batch_size)
        shards = [encode_batch(model, take_rows(batch, rows), device, source_states=sources) for rows in slices]
        bare_update(model, opt, train, shards, step)
    return model


def bare_update(model: Any, opt: Any, train: Any, shards: Sequence[Any], step: int) -> None:
    """The stage's optimizer math in plain torch and nothing else, on one process: schedule; per micro-batch the rollout,
    its masked squared-error sum and prediction sum; the global batch's mean, and its variance from each micro-batch's
    spread about its own mean plus the means' spread about the global mean, summed over the micro-batches left to
    right; each micro-batch's surrogate (its share of the loss and its exact first-order share of the global
    KL, `global_kl_terms`) backpropagated on its own, the gradients summed along the fixed tree; clip, loss read back,
    AdamW step. It ends with
    the stage's weights bit for bit (`test_bare_loop_does_the_stage_math`)."""
    import functools
    import operator

    import torch

    from geno_pipeline.distributed import tree_sum
    from geno_pipeline.training.schedule import set_optimizer_lr
    from geno_pipeline.training.trainer import KL_EPS, flat_grad, global_kl_terms, set_flat_grad

    add = functools.partial(functools.reduce, operator.add)  # left to right, as the stage sums micro-batches
    set_optimizer_lr(opt, step=step, total_steps=train.steps, warmup_steps=train.warmup_steps, schedule=train.schedule)
    n = float(max(sum(int(s.action_mask.sum()) for s in shards), 1))
    preds = [model.rollout(s.state, s.actions) for s in shards]
    masks = [s.action_mask.to(p.dtype) for s, p in zip(shards, preds, strict=True)]
    errs = [((p - s.target).pow(2).mean(dim=-1) * m).sum() for p, s, m in zip(preds, shards, masks, strict=True)]
    sums = [(p * m.unsqueeze(-1)).sum(dim=(0, 1)) for p, m in zip(preds, masks, strict=True)]
    mu, pred_loss = add(x.detach() for x in sums) / n, add(e.detach() for e in errs) / n
    counts = [m.sum().clamp(min=1.0) for m in masks]
    own = [
        ((p.detach() - s1.detach() / c) ** 2 * m.unsqueeze(-1)).sum(dim=(0, 1))
        for p, s1, c, m in zip(preds, sums, counts, masks, strict=True)
    ]
    between = [m.sum() * (s1.detach() / c - mu) ** 2 for s1, c, m in zip(sums, counts, masks, strict=True)]
    kl, grad_mu, grad_var = global_kl_terms(mu, (add(own) + add(between)) / n + KL_EPS)
    squares = [((p - mu).pow(2) * m.unsqueeze(-1)).sum(dim=(0, 1)) for p, m in zip(preds, masks, strict=True)]
    params = [p for g in opt.param_groups for p in g["params"]]
    grads = []
    for e, s1, s2 in zip(errs, sums, squares, strict=True):
        opt.zero_grad()
        (e / n + train.kl_weight * ((grad_mu * s1).sum() + (grad_var * s2).sum()) / n).backward()
        grads.append(flat_grad(params))
    set_flat_grad(params, tree_sum(grads))  # the stage's order: the fixed balanced tree over the micro-batches
    torch.nn.utils.clip_grad_norm_(params, train.grad_clip_norm)
    float(pred_loss + train.kl_weight * kl)  # the step's loss read back once, as the stage reads it before stepping
    opt.step()


def _loop_parts(facts: Any) -> dict[str, float]:
    """The train stage's `loop_<part>_seconds` facts as {part: seconds}."""
    return {
        k.removeprefix("loop_").removesuffix("_seconds"): float(v)
        for k, v in facts.items()
        if k.startswith("loop_") and isinstance(v, (int, float))
    }


def cadence(steps: int, log_every_steps: int, checkpoint_every_steps: int) -> tuple[int, int]:
    """(held-out evaluations, checkpoints) of a run: step 0 and every `log_every_steps`-th step and the last are evaluated;
    every `checkpoint_every_steps`-th step and the last are checkpointed."""

    def scheduled(every: int) -> int:
        return steps // every + (steps % every != 0)

    return 1 + scheduled(log_every_steps), scheduled(checkpoint_every_steps)


def _durable_writes(files: dict[str, bytes], directory: Path, count: int) -> None:
    """`count` checkpoints of `files`: each file written and synced, the directory synced, renamed in, the parent synced."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        staging = directory / f".{index}.tmp"
        staging.mkdir()
        for name, data in files.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        fsync_dir(staging)
        os.replace(staging, directory / str(index))
        fsync_dir(directory)


def required_work_seconds(params: Any, layout: Layout, checkpoint: Path) -> tuple[int, int, float]:
    """(evaluations, checkpoints, seconds): the profile's held-out evaluations with their collapse metrics, and as many
    durable writes of `checkpoint`'s files (a checkpoint the stage wrote), timed alone."""
    from geno_pipeline.config import TrainStageParams
    from geno_pipeline.training import stage as train_stage
    from geno_pipeline.training.collapse import CollapseMonitor
    from geno_pipeline.training.heldout import evaluate

    train = params.train
    evaluations, checkpoints = cadence(train.steps, params.collapse.log_every_steps, train.checkpoint_every_steps)
    run = train_stage.setup(TrainStageParams.from_params(params), layout, expected_fingerprint=None, model_factory=None)
    assert run.held is not None
    files = {p.name: p.read_bytes() for p in sorted(checkpoint.iterdir())}
    monitor = CollapseMonitor.from_params(params.collapse)
    t0 = time.perf_counter()
    for index in range(evaluations):
        ev = evaluate(run.model, run.held)
        monitor.observe(ev.prediction, ev.target, kl_reg=ev.kl_reg, step=index, force=True)
    with tempfile.TemporaryDirectory(dir=layout.root) as tmp:
        _durable_writes(files, Path(tmp), checkpoints)
        seconds = time.perf_counter() - t0
    return evaluations, checkpoints, seconds


def pair_ratios(ours: Sequence[float], bare: Sequence[float]) -> list[float]:
    """ours[i] / bare[i] of each alternate pair, rounded to 4 places."""
    return [round(o / b, 4) for o, b in zip(ours, bare, strict=True)]


def bench_train_stage(profile: str, params: Any, root: Path, repeats: int, *, prefetch: bool | None = None) -> StageBench:
    """Alternate runs of the stage and of the bare loop on one prepared dataset; medians and the stage's parts; and the
    work the profile's cadence requires, timed alone. `prefetch` as `train --prefetch` (None: auto)."""
    from geno_pipeline.training import stage as train_stage
    from geno_pipeline.training.determinism import configure_torch_reproducibility

    layout = _prepare(root, params)
    configure_torch_reproducibility(0, deterministic=params.runtime.deterministic, cpu_threads=params.runtime.cpu_threads)
    warm = params.model_copy(update={"train": params.train.model_copy(update={"steps": 2})})
    _bare_loop(warm, layout)  # one-time costs (the optimizer's first use imports torch._dynamo) paid before timing
    ours: list[tuple[float, dict[str, float], float]] = []
    bare: list[float] = []
    waits: list[float] = []
    required: list[float] = []
    for index in range(repeats):
        home = layout.root / "runs" / str(index)
        run_layout = Layout(layout.root, train_home=home)
        t0 = time.perf_counter()
        result = train_stage.run(params, run_layout, prefetch=prefetch)
        wall = time.perf_counter() - t0
        writer, kind = result.facts["checkpoint_writer_seconds"], result.facts["checkpoint_writer"]
        assert isinstance(writer, float) and isinstance(kind, str)
        ours.append((wall, _loop_parts(result.facts), writer))
        prefetched = bool(result.facts["prefetch"])
        waits.append(float(result.facts["input_wait_ms_per_step"] or 0.0))  # type: ignore[arg-type]
        t0 = time.perf_counter()
        _bare_loop(params, layout)
        bare.append(time.perf_counter() - t0)
        last = max(run_layout.checkpoints.iterdir())
        evaluations, checkpoints, seconds = required_work_seconds(params, run_layout, last)
        required.append(seconds)
        shutil.rmtree(home)
    ours_s, bare_s, required_s = statistics.median(o[0] for o in ours), statistics.median(bare), statistics.median(required)
    pairs = pair_ratios([o[0] for o in ours], bare)
    wall, loop, writer = min(ours, key=lambda o: abs(o[0] - ours_s))
    outside = wall - sum(loop.values())
    parts = {"setup_and_finish": round(outside, 4), **{k: round(v, 4) for k, v in loop.items()}}
    return StageBench(
        profile=profile, steps=params.train.steps, repeats=repeats, ours_s=round(ours_s, 4), bare_s=round(bare_s, 4),
        ratio=round(ours_s / bare_s, 4), meets_target=ours_s / bare_s <= TARGET_RATIO, pair_ratios=pairs,
        parts=parts, writer=kind, writer_s=round(writer, 4),
        evaluations=evaluations, checkpoints=checkpoints, required_s=round(required_s, 4),
        floor_ratio=round((bare_s + required_s) / bare_s, 4), cpu_threads=params.runtime.cpu_threads, prefetch=prefetched,
        input_wait_ms_per_step=round(statistics.median(waits), 4),
    )  # fmt: skip


def tiny_and_default_profiles(root: Path, *, quick: bool, repeats: int) -> list[StageBench]:
    """The end-to-end figure on the tiny profile and on the default one (fewer steps with --quick); and the default
    profile at cpu_threads 1 with and without prefetch (one core computes, the other prepares the next batches)."""
    tiny_path = root / "tests" / "params_tiny.yaml"
    out = []
    default_steps = 300 if quick else None
    runs: list[tuple[str, Path, int | None, int | None, bool | None]] = [
        ("tiny", tiny_path, 60 if quick else 300, None, None), ("default", root / "params.yaml", default_steps, None, None),
        ("default, 1 thread, prefetch", root / "params.yaml", default_steps, 1, True),
        ("default, 1 thread, no prefetch", root / "params.yaml", default_steps, 1, False),
    ]  # fmt: skip
    for name, path, steps, threads, prefetch in runs:
        if not path.is_file():
            continue
        params = _params_with(path, steps=steps) if steps is not None else _params_with(path)
        if threads is not None:
            params = params.model_copy(update={"runtime": params.runtime.model_copy(update={"cpu_threads": threads})})
        with tempfile.TemporaryDirectory() as tmp:
            out.append(bench_train_stage(name, params, Path(tmp), repeats, prefetch=prefetch))
    return out


# ---------------------------------------------------------------- scaling curves


def fit_growth(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): the b of y ~ a * x^b."""
    if len(xs) != len(ys) or len(xs) < 2 or min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("fit_growth needs at least two positive (x, y) points")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    if den == 0:
        raise ValueError("fit_growth needs at least two distinct sizes")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den


def _growth_words(b: float) -> str:
    return "linear" if 0.85 <= b <= 1.15 else "sublinear" if b < 0.85 else "superlinear"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())


def _curve(layout: Layout, name: str, header: Sequence[str], rows: Sequence[Sequence[float]], y: str) -> ScalingCurve:
    path = layout.bench_dir / f"{name}.csv"
    _write_csv(path, header, rows)
    xi, yi = 0, list(header).index(y)
    xs, ys = [float(r[xi]) for r in rows], [float(r[yi]) for r in rows]
    b, tail = fit_growth(xs, ys), fit_growth(xs[-3:], ys[-3:])
    return ScalingCurve(
        name=name, csv=layout.rel(path), x=header[0], y=y, exponent=round(b, 3), exponent_largest=round(tail, 3), growth=_growth_words(tail)
    )


def _step_seconds(params: Any, root: Path) -> float:
    """Seconds per step of the train stage's loop (setup excluded) on the prepared dataset at `root`."""
    from geno_pipeline.training import stage as train_stage

    result = train_stage.run(params, Layout(root, train_home=root / "runs" / "scaling"))
    return sum(_loop_parts(result.facts).values()) / params.train.steps


def _train_curves(layout: Layout, root: Path, *, quick: bool) -> list[ScalingCurve]:
    steps = 10 if quick else 30
    base = _params_with(root / "params.yaml", steps=steps, warmup_steps=2, checkpoint_every_steps=steps)
    batches = (16, 64, 256) if quick else (16, 32, 64, 128, 256, 512)
    widths = (64, 256, 1024) if quick else (64, 128, 256, 512, 1024)
    curves = []
    with tempfile.TemporaryDirectory() as tmp:
        _prepare(Path(tmp), base)
        _step_seconds(base, Path(tmp))  # warm-up
        rows: list[list[float]] = []
        for size in batches:
            params = base.model_copy(update={"train": base.train.model_copy(update={"batch_size": size})})
            rows.append([size, round(_step_seconds(params, Path(tmp)), 6)])
        curves.append(_curve(layout, "train_step_vs_batch_size", ("batch_size", "seconds_per_step"), rows, "seconds_per_step"))
        rows = []
        for width in widths:
            model = base.train.model.model_copy(update={"hidden_dim": width})
            params = base.model_copy(update={"train": base.train.model_copy(update={"model": model})})
            rows.append([width, round(_step_seconds(params, Path(tmp)), 6)])
        curves.append(_curve(layout, "train_step_vs_model_width", ("hidden_dim", "seconds_per_step"), rows, "seconds_per_step"))
    return curves


def _data_curve(layout: Layout, root: Path, *, quick: bool) -> list[ScalingCurve]:
    import yaml

    from tools.benchio import ingest_params, measured, write_bench_fasta

    sizes_mb = (1, 4, 16, 64) if quick else (1, 4, 16, 64, 256, 512)
    rows: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "genomes").mkdir()
        fasta = project / "genomes" / "scaling.fa"
        ingest_params(root, project, "genomes/scaling.fa")
        params_file = project / "params.yaml"  # few windows, so that 1 Mb holds them and the read dominates
        raw = yaml.safe_load(params_file.read_text())
        raw["data"].update(train_windows=800, valid_windows=100)
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        for mb in sizes_mb:
            write_bench_fasta(fasta, mb * 1_000_000)
            wall, peak = measured(["-m", "geno_pipeline", "data", "--root", str(project)], project)
            rows.append([mb, round(wall, 4), round(peak / 2**20, 1)])
            print(f"bench: scaling: data stage on {mb} Mb: {wall:.2f} s, peak RSS {peak / 2**20:.0f} MiB", flush=True)
    header = ("genome_mb", "seconds", "peak_rss_mib")
    seconds = _curve(layout, "data_stage_vs_genome_length", header, rows, "seconds")
    rss = _curve(layout, "data_stage_vs_genome_length", header, rows, "peak_rss_mib")
    return [seconds, rss]


_COLLAPSE = """import sys, time, torch
from geno_pipeline.training.collapse import compute_collapse_metrics
def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now: the import's transient peak is not counted
before = kib("VmRSS:")
n = int(sys.argv[1]); gen = torch.Generator().manual_seed(0)
p = torch.randn(n, 256, generator=gen, dtype=torch.float64); t = torch.randn(n, 256, generator=gen, dtype=torch.float64)
t0 = time.perf_counter(); compute_collapse_metrics(p, t, kl_reg=0.0); wall = time.perf_counter() - t0
print(wall, (kib("VmHWM:") - before) / 1024)
"""  # peak RSS above the process's resident size before the inputs: the two [N, 256] float64 inputs (4 KiB/row) included


def _collapse_curve(layout: Layout, *, quick: bool) -> list[ScalingCurve]:
    sizes = (1024, 4096, 16384) if quick else (1024, 4096, 16384, 65536)
    rows: list[list[float]] = []
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", _COLLAPSE, str(n)], capture_output=True, text=True, check=True).stdout
        wall, peak = (float(v) for v in out.split())
        rows.append([n, round(wall, 5), round(max(peak, 0.1), 1)])
        print(f"bench: scaling: collapse metrics at N={n}: {wall:.3f} s, peak RSS above baseline {peak:.0f} MiB", flush=True)
    header = ("n", "seconds", "peak_rss_above_baseline_mib")
    return [
        _curve(layout, "collapse_metrics_vs_n", header, rows, "seconds"),
        _curve(layout, "collapse_metrics_vs_n", header, rows, "peak_rss_above_baseline_mib"),
    ]


def _grown_bundle(source: Path, dest: Path, extra_mib: int) -> None:
    """A copy of a verified bundle whose weights file carries `extra_mib` MiB more (SHA256SUMS and provenance updated)."""
    import json
    import shutil

    import torch

    from geno_pipeline.checksums import sha256_file, write_sha256sums
    from geno_pipeline.errors import ReleaseError
    from geno_pipeline.readers import read_tensors
    from geno_pipeline.release.stage import BUNDLE_FILES
    from geno_pipeline.release.verify import safetensors_metadata
    from geno_pipeline.tensorfile import serialize_tensors

    shutil.copytree(source, dest)
    model = dest / "model.safetensors"
    tensors = read_tensors(model, error=ReleaseError, fix="rebuild the release (dvc repro)")
    if extra_mib:
        tensors["bench_padding"] = torch.zeros(extra_mib << 18, dtype=torch.float32)
    model.write_bytes(serialize_tensors(tensors, safetensors_metadata(model)))
    provenance = json.loads((dest / "provenance.intoto.json").read_text())
    for subject in provenance["subject"]:
        subject["digest"]["sha256"] = sha256_file(dest / subject["name"])
    (dest / "provenance.intoto.json").write_text(json.dumps(provenance, sort_keys=True, indent=2) + "\n")
    write_sha256sums(dest, sorted(BUNDLE_FILES))


def _verify_curve(layout: Layout, root: Path, *, quick: bool) -> list[ScalingCurve]:
    from geno_pipeline.release.verify import verify_bundle

    source = Layout.for_root(root).release_dir
    if not source.is_dir() or verify_bundle(source):
        print(f"bench: scaling: skipped verify vs bundle size: {source} is missing or does not verify (run dvc repro)", flush=True)
        return []
    extras = (0, 16, 64) if quick else (0, 16, 64, 256, 1024)
    rows: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for extra in extras:
            bundle = Path(tmp) / f"bundle-{extra}"
            _grown_bundle(source, bundle, extra)
            size = sum(p.stat().st_size for p in bundle.iterdir())
            problems = verify_bundle(bundle)
            if problems:
                raise RuntimeError(f"the grown bundle does not verify: {problems}")
            wall = median_seconds(partial(verify_bundle, bundle), 3)
            rows.append([round(size / 2**20, 2), round(wall, 5)])
            print(f"bench: scaling: verify on a {size / 2**20:.0f} MiB bundle: {wall:.3f} s", flush=True)
    return [_curve(layout, "verify_vs_bundle_size", ("bundle_mib", "seconds"), rows, "seconds")]


def run_scaling(layout: Layout, *, quick: bool) -> ScalingReport:
    """Every scaling curve: CSVs under reports/bench/, and reports/bench/scaling.json with the fitted growth of each."""
    from geno_pipeline.jsonio import write_json

    curves = _train_curves(layout, layout.root, quick=quick)
    curves += _data_curve(layout, layout.root, quick=quick)
    curves += _collapse_curve(layout, quick=quick)
    curves += _verify_curve(layout, layout.root, quick=quick)
    report = ScalingReport(quick=quick, curves=curves)
    write_json(layout.scaling_report, report, schema="bench_scaling")
    return report

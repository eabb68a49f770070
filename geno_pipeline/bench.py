"""`geno-pipeline bench`: performance as ratios measured in one run (never as timed tests)."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from geno_pipeline.documents import Document
from geno_pipeline.jsonio import write_json
from geno_pipeline.layout import Layout

__all__ = ["BenchEntry", "BenchReport", "run_bench", "run_bench_cli"]


class BenchEntry(Document):
    """One measured ratio."""

    name: str
    """What was compared."""
    ours_s: float
    """Seconds for our implementation (median)."""
    reference_s: float
    """Seconds for the reference (median)."""
    ratio: float
    """ours_s / reference_s (lower is better for us)."""
    detail: str
    """Sizes and repetitions."""


class BenchReport(Document):
    """reports/bench.json."""

    schema_version: Literal["1.0"] = "1.0"
    """Version of this document's shape."""
    quick: bool
    """Reduced sizes and repetitions."""
    entries: list[BenchEntry]
    """Measured ratios."""
    collapse_peak_rss_mib_n16384: float | None
    """Peak RSS growth (MiB) of compute_collapse_metrics at N=16384, D=256 in a fresh process."""


def _median(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _entry(name: str, ours: float, ref: float, detail: str) -> BenchEntry:
    return BenchEntry(name=name, ours_s=round(ours, 6), reference_s=round(ref, 6), ratio=round(ours / ref, 4), detail=detail)


def bench_samplers(n: int, repeats: int) -> BenchEntry:
    """Vectorized edit-type draws vs a per-draw Python loop."""
    import numpy as np

    from geno_pipeline.training.sampling import sample_edit_type, sample_edit_types_array

    ours = _median(lambda: sample_edit_types_array(np.random.default_rng(0), n), repeats)
    rng = random.Random(0)
    ref = _median(lambda: [sample_edit_type(rng) for _ in range(n)], max(1, repeats // 2))
    return _entry("edit_type_sampler_vectorized_vs_python_loop", ours, ref, f"{n} draws, median of {repeats}")


def _training_setup(steps: int):  # type: ignore[no-untyped-def]
    import numpy as np
    import torch

    from geno_pipeline.config import TrainParams
    from geno_pipeline.data.genome import synthetic_genome
    from geno_pipeline.training.model import build_world_model
    from geno_pipeline.training.sampling import DEFAULT_EDIT_TYPE_WEIGHTS, DEFAULT_ROLLOUT_STEP_MIX
    from geno_pipeline.training.trainer import TorchTrainerBatch
    from geno_pipeline.training.tuples import TupleSampler

    torch.set_num_threads(2)
    train = TrainParams(steps=steps, warmup_steps=1)
    genome = synthetic_genome(1, 320 * 2000)
    windows = genome.reshape(2000, 320)
    model = build_world_model(window_length=256, params=train.model, encoder_seed=1, init_seed=2)
    sampler = TupleSampler(3, window_length=256, weights=DEFAULT_EDIT_TYPE_WEIGHTS, mix=DEFAULT_ROLLOUT_STEP_MIX)
    batches = []
    for _ in range(steps):
        raw = sampler.draw(windows, train.batch_size)
        b, k, length = raw.targets.shape
        batches.append(
            TorchTrainerBatch(
                state=model.encoder.encode(torch.from_numpy(raw.sources)),
                target=model.encoder.encode(torch.from_numpy(raw.targets.reshape(b * k, length))).reshape(b, k, -1),
                actions=torch.from_numpy(raw.actions),
                action_mask=torch.from_numpy(raw.mask),
                rel_edits=raw.rel_edits,
                window_ids=raw.window_ids,
            )
        )
    _ = np
    return train, model, batches


def bench_train_step(steps: int, repeats: int) -> list[BenchEntry]:
    """TorchTrainer.train_step vs a bare torch loop of the same math; deterministic vs not."""
    import torch

    from geno_pipeline.training.model import rollout
    from geno_pipeline.training.schedule import wsd_lr_multiplier
    from geno_pipeline.training.trainer import TorchTrainer, build_adamw_optimizer, gaussian_kl, masked_prediction_loss

    train, model, batches = _training_setup(steps)
    state0 = {k: v.clone() for k, v in model.state_dict().items()}

    def ours() -> None:
        model.load_state_dict(state0)
        opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
        trainer = TorchTrainer(
            predictor=model.predictor, action_encoder=model.action_encoder, optimizer=opt, config=train, total_steps=steps
        )
        for i, batch in enumerate(batches, start=1):
            trainer.train_step(batch, step=i)

    def bare() -> None:
        model.load_state_dict(state0)
        opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, b in enumerate(batches, start=1):
            m = wsd_lr_multiplier(i, total_steps=steps, warmup_steps=train.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = train.lr * m
            pred = rollout(model.predictor, model.action_encoder, b.state, b.actions)
            loss = masked_prediction_loss(pred, b.target, b.action_mask) + train.kl_weight * gaussian_kl(pred, b.action_mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip_norm)
            opt.step()
            float(loss.detach())

    bare()  # warm up
    torch.use_deterministic_algorithms(True)
    ours_s = _median(ours, repeats)
    bare_s = _median(bare, repeats)
    torch.use_deterministic_algorithms(False)
    nondet_s = _median(ours, repeats)
    detail = f"{steps} steps of batch {train.batch_size}, default model, 2 threads, median of {repeats}"
    return [
        _entry("train_step_vs_bare_torch_loop", ours_s, bare_s, detail),
        _entry("deterministic_vs_nondeterministic_train_steps", ours_s, nondet_s, detail),
    ]


def bench_collapse(n: int, dim: int) -> BenchEntry:
    """compute_collapse_metrics vs the pure-Python reference."""
    import torch

    from geno_pipeline.training.collapse import compute_collapse_metrics, reference_collapse_metrics

    gen = torch.Generator().manual_seed(0)
    p = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    t = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    ours = _median(lambda: compute_collapse_metrics(p, t, kl_reg=0.0), 3)
    pl, tl = p.tolist(), t.tolist()
    ref = _median(lambda: reference_collapse_metrics(pl, tl, kl_reg=0.0), 1)
    return _entry("collapse_metrics_vs_pure_python", ours, ref, f"N={n}, D={dim}")


def collapse_peak_rss_mib(n: int = 16384, dim: int = 256) -> float:
    """Peak RSS growth of one compute_collapse_metrics call, measured in a fresh process."""
    code = (
        "import resource, torch\n"
        "from geno_pipeline.training.collapse import compute_collapse_metrics\n"
        f"p = torch.randn({n}, {dim}, dtype=torch.float64); t = torch.randn({n}, {dim}, dtype=torch.float64)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "compute_collapse_metrics(p, t, kl_reg=0.0)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return round(float(out.strip().splitlines()[-1]), 1)


def bench_sha256(size_mib: int, repeats: int) -> BenchEntry:
    """checksums.sha256_file vs coreutils sha256sum."""
    import os

    from geno_pipeline.checksums import sha256_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob"
        path.write_bytes(os.urandom(size_mib << 20))
        ours = _median(lambda: sha256_file(path), repeats)
        ref = _median(lambda: subprocess.run(["sha256sum", str(path)], capture_output=True, check=True), repeats)
    return _entry("sha256_file_vs_coreutils_sha256sum", ours, ref, f"{size_mib} MiB file, median of {repeats}")


def bench_preflight(root: Path, repeats: int) -> BenchEntry:
    """`geno-pipeline preflight` wall time vs `python -c "import torch"`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preflight.json"

        def preflight() -> None:
            subprocess.run(
                [sys.executable, "-m", "geno_pipeline", "preflight", "--root", str(root), "--output", str(out)], capture_output=True
            )

        ours = _median(preflight, repeats)
    ref = _median(lambda: subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, check=True), repeats)
    return _entry("preflight_vs_import_torch", ours, ref, f"wall time of whole processes, median of {repeats}")


def run_bench(layout: Layout, *, quick: bool) -> BenchReport:
    """Run every benchmark and write reports/bench.json."""
    entries = [
        bench_samplers(200_000 if quick else 1_000_000, 3 if quick else 5),
        *bench_train_step(20 if quick else 60, 3),
        bench_collapse(256 if quick else 1024, 256),
        bench_sha256(16 if quick else 64, 3),
        bench_preflight(layout.root, 3 if quick else 5),
    ]
    report = BenchReport(quick=quick, entries=entries, collapse_peak_rss_mib_n16384=None if quick else collapse_peak_rss_mib())
    write_json(layout.bench_report, report, schema="bench")
    return report


def run_bench_cli(layout: Layout, *, quick: bool) -> int:
    """Print the ratios; returns 0."""
    print("bench: measuring (the full run takes a few minutes; --quick is faster) ...", flush=True)
    report = run_bench(layout, quick=quick)
    for e in report.entries:
        print(f"bench: {e.name}: ratio {e.ratio:.4f} (ours {e.ours_s:.4f}s vs reference {e.reference_s:.4f}s; {e.detail})")
    if report.collapse_peak_rss_mib_n16384 is not None:
        print(f"bench: compute_collapse_metrics peak RSS growth at N=16384, D=256: {report.collapse_peak_rss_mib_n16384} MiB")
    return 0

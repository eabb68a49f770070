"""`python -m tools.bench`: performance as ratios measured in one run (never as timed tests)."""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from geno_pipeline.documents import Document
from geno_pipeline.errors import DistributedError
from geno_pipeline.jsonio import write_json
from geno_pipeline.layout import Layout
from tools import child_env, run_tool
from tools.benchio import ingest_params, measured, write_bench_fasta
from tools.benchtrain import StageBench, bare_update, median_seconds, run_scaling, seconds, tiny_and_default_profiles

__all__ = ["BenchEntry", "BenchReport", "innermost_frame", "run_bench", "run_bench_cli"]


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


class IngestFigures(Document):
    """The whole `geno-pipeline data` process on a generated FASTA against a bare read + lookup-table pass."""

    format: Literal["plain", "bgzip"]
    """The FASTA file's format."""
    file_bytes: int
    """Size of the file."""
    bases: int
    """Bases in it."""
    ours_s: float
    """Wall seconds of `geno-pipeline data` (median), startup, reading, windows and writes included."""
    bare_s: float
    """Wall seconds of a bare Python process: read(), (gzip.decompress,) np.frombuffer, one 256-entry table pass (median)."""
    ratio: float
    """ours_s / bare_s; the target is at most 3."""
    peak_rss_mib: float
    """Peak resident memory of the `geno-pipeline data` process."""
    rss_limit_mib: float
    """The target: 1.5 x the bases plus 100 MiB."""
    bare_peak_rss_mib: float
    """Peak resident memory of the bare process."""
    mib_per_s: float
    """Bases ingested per second by the whole process (MiB/s)."""
    human_assembly_s: float
    """Seconds for a 3.1 Gb assembly at this run's rate (the fixed startup scaled too, so an upper estimate)."""
    human_assembly_peak_rss_gib: float
    """Peak memory for a 3.1 Gb assembly at this run's peak RSS per base (the fixed part scaled too, so an upper estimate)."""
    meets_targets: bool
    """ratio <= 3 and peak_rss_mib <= rss_limit_mib."""


class ReductionTraffic(Document):
    """Bytes rank 0 of W moves per step to reduce the default model's gradient (M micro-batches, gloo on 127.0.0.1)."""

    world_size: int
    """Workers W."""
    micro_batches: int
    """Micro-batches M per step."""
    gradient_bytes: int
    """The gradient, P float32 values, in bytes."""
    ring_bytes: int
    """What each rank receives in a ring all-reduce of the gradient: 2(W-1)/W of it."""
    tree_received_bytes: float
    """Received per step on the trainer's tree path (counted by the process group; the two small statistic gathers included)."""
    gather_received_bytes: float
    """Received per step when every micro-batch's gradient is all-gathered instead (counted by the process group)."""
    ddp_allreduce_bytes: float
    """Gradient bytes DDP handed to all-reduce per step (counted by a communication hook)."""
    tree_loopback_bytes: float | None
    """Bytes the loopback interface carried per step on the tree path, divided by W (all ranks' traffic, headers
    included; None where /proc/net/dev cannot be read)."""
    gather_loopback_bytes: float | None
    """The same for the all-gather path."""
    ddp_loopback_bytes: float | None
    """The same for DDP: what the backend's all-reduce moved."""
    tree_vs_ring: float
    """tree_received_bytes / ring_bytes."""


class DistributedBench(Document):
    """Multi-process training on the CPU: seconds per step and which runs give the same bits."""

    steps: int
    """Timed steps per run (after 5 warm-up steps)."""
    one_worker_1_thread_s: float
    """Seconds per step: 1 worker, 1 thread."""
    one_worker_2_threads_s: float
    """Seconds per step: 1 worker, 2 threads."""
    two_workers_1_thread_s: float
    """Seconds per step: 2 workers x 1 thread, the trainer's tree reduction (median of the alternate runs)."""
    two_workers_ddp_s: float
    """Seconds per step: 2 workers x 1 thread, plain DistributedDataParallel (all-reduce, KL per shard; median of the
    alternate runs)."""
    tree_vs_ddp_pair_ratios: list[float]
    """Tree ÷ DDP seconds per step of each alternate pair, 2 workers x 1 thread, M = 2."""
    tree_vs_ddp_ratio: float
    """The median of those pair ratios."""
    meets_target: bool
    """tree_vs_ddp_ratio <= 1.15."""
    traffic: list[ReductionTraffic] = Field(default_factory=list)
    """Bytes per step at W = 2 and 4, M = 4: the tree, the all-gather and DDP."""
    bitwise_1x1_vs_2x1: bool
    """Final weights of 1 worker x 1 thread and 2 workers x 1 thread are the same bits."""
    bitwise_1x2_vs_1x1: bool
    """Final weights of 1 worker x 2 threads and 1 worker x 1 thread are the same bits."""
    bitwise_gather_vs_tree: bool
    """Final weights of the all-gather path and the tree path (2 workers, M = 4) are the same bits."""
    max_abs_diff_1x2_vs_1x1: float
    """Largest absolute weight difference between 2 threads and 1 thread."""
    max_abs_diff_ddp_vs_fixed: float
    """Largest absolute weight difference between DDP and the tree (different KL definition and sum order)."""


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
    fasta_ingest: list[IngestFigures]
    """FASTA ingest of the data stage, plain and bgzip."""
    distributed: DistributedBench | None = None
    """Multi-process training on the CPU."""
    train_stage: list[StageBench] = Field(default_factory=list)
    """The headline: the whole train stage against a bare end-to-end loop, on the tiny and the default profile."""


def _entry(name: str, ours: float, ref: float, detail: str) -> BenchEntry:
    return BenchEntry(name=name, ours_s=round(ours, 6), reference_s=round(ref, 6), ratio=round(ours / ref, 4), detail=detail)


def bench_samplers(n: int, repeats: int) -> BenchEntry:
    """Vectorized edit-type draws vs a per-draw Python loop."""

    from geno_pipeline.training.sampling import sample_edit_type, sample_edit_types_array

    ours = median_seconds(lambda: sample_edit_types_array(np.random.default_rng(0), n), repeats)
    rng = random.Random(0)
    ref = median_seconds(lambda: [sample_edit_type(rng) for _ in range(n)], max(1, repeats // 2))
    return _entry("edit_type_sampler_vectorized_vs_python_loop", ours, ref, f"{n} draws, median of {repeats}")


def _training_setup(steps: int):  # type: ignore[no-untyped-def]
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

    from geno_pipeline.training.trainer import TorchTrainer, build_adamw_optimizer

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
        for i, b in enumerate(batches, start=1):
            bare_update(model, opt, train, [b], i)

    bare()  # warm up
    torch.use_deterministic_algorithms(True)
    ours_s, bare_s = _interleaved(ours, bare, repeats)
    torch.use_deterministic_algorithms(False)
    nondet_s = median_seconds(ours, repeats)
    detail = f"{steps} steps of batch {train.batch_size}, default model, 2 threads, median of {repeats} alternating runs"
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
    ours = median_seconds(lambda: compute_collapse_metrics(p, t, kl_reg=0.0), 3)
    pl, tl = p.tolist(), t.tolist()
    ref = median_seconds(lambda: reference_collapse_metrics(pl, tl, kl_reg=0.0), 1)
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

    from geno_pipeline.checksums import sha256_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob"
        path.write_bytes(os.urandom(size_mib << 20))
        ours = median_seconds(lambda: sha256_file(path), repeats)
        ref = median_seconds(lambda: subprocess.run(["sha256sum", str(path)], capture_output=True, check=True), repeats)
    return _entry("sha256_file_vs_coreutils_sha256sum", ours, ref, f"{size_mib} MiB file, median of {repeats}")


def _interleaved(ours: Callable[[], object], ref: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians of `repeats` runs of each, `ours` and `ref` alternately, so that a change in the machine's load hits both
    alike instead of one block of runs."""
    pairs = [(seconds(ours), seconds(ref)) for _ in range(repeats)]
    return statistics.median(o for o, _ in pairs), statistics.median(r for _, r in pairs)


def bench_preflight(root: Path, repeats: int) -> BenchEntry:
    """`geno-pipeline preflight` wall time vs `python -c "import torch"`, whole processes, run alternately."""
    codes: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preflight.json"
        command = [sys.executable, "-m", "geno_pipeline", "preflight", "--root", str(root), "--output", str(out)]

        def preflight() -> None:
            codes.append(subprocess.run(command, capture_output=True).returncode)

        def import_torch() -> None:
            subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, check=True)

        ours, ref = _interleaved(preflight, import_torch, repeats)
    exits = "exit 0" if set(codes) == {0} else f"exit codes {sorted(set(codes))} (not ok: some checks stopped early)"
    return _entry("preflight_vs_import_torch", ours, ref, f"wall time of whole processes, median of {repeats} alternate runs; {exits}")


def bench_help(repeats: int) -> BenchEntry:
    """`geno-pipeline --help` vs `python -c "pass"`: what the CLI costs before it does anything."""
    script = Path(sys.executable).parent / "geno-pipeline"
    command = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "geno_pipeline", "--help"]
    ours, ref = _interleaved(
        lambda: subprocess.run(command, capture_output=True, check=True),
        lambda: subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True),
        repeats,
    )
    return _entry("help_vs_python_pass", ours, ref, f"`{' '.join(Path(c).name for c in command)}`, median of {repeats} alternate runs")


BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_BGZF_BLOCK = 65280  # bgzip's uncompressed bytes per block


def bgzf_compress(data: bytes, level: int = 1) -> bytes:
    """BGZF, as bgzip and samtools write it: independent gzip members of at most 64 KiB with the `BC` extra field, then the EOF block."""
    out = []
    for first in range(0, len(data), _BGZF_BLOCK):
        piece = data[first : first + _BGZF_BLOCK]
        deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        body = deflate.compress(piece) + deflate.flush()
        header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H2sHH", 6, b"BC", 2, 18 + len(body) + 8 - 1)
        out.append(header + body + struct.pack("<II", zlib.crc32(piece), len(piece)))
    out.append(BGZF_EOF)
    return b"".join(out)


HUMAN_ASSEMBLY_BASES = 3.1e9
_BARE_INGEST = """import gzip, sys
import numpy as np
data = open(sys.argv[1], "rb").read()
if sys.argv[1].endswith(".gz"):
    data = gzip.open(sys.argv[1], "rb").read()
table = np.zeros(256, dtype=np.uint8)
table[np.frombuffer(b"ACGTNacgtn", dtype=np.uint8)] = np.arange(10, dtype=np.uint8) % 5
codes = table[np.frombuffer(data, dtype=np.uint8)]
"""


def bench_fasta_ingest(root: Path, bases: int, repeats: int) -> list[IngestFigures]:
    """`geno-pipeline data` on a generated FASTA (plain, then bgzip) vs a bare read + table pass; wall time and peak RSS."""
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "genomes").mkdir()
        plain = project / "genomes" / "bench.fa"
        data_cmd = ["-m", "geno_pipeline", "data", "--root", str(project)]
        write_bench_fasta(plain, bases)
        packed = project / "genomes" / "bench.fa.gz"
        packed.write_bytes(bgzf_compress(plain.read_bytes()))
        for kind, path in (("plain", plain), ("bgzip", packed)):
            ingest_params(root, project, f"genomes/{path.name}")
            ours = [measured(data_cmd, project) for _ in range(repeats)]
            bare = [measured(["-c", _BARE_INGEST, str(path)], project) for _ in range(repeats)]
            ours_s, bare_s = statistics.median(w for w, _ in ours), statistics.median(w for w, _ in bare)
            peak = max(r for _, r in ours)
            limit = 1.5 * bases + (100 << 20)
            scale = HUMAN_ASSEMBLY_BASES / bases
            figures.append(
                IngestFigures(
                    format=kind,
                    file_bytes=path.stat().st_size,
                    bases=bases,
                    ours_s=round(ours_s, 3),
                    bare_s=round(bare_s, 3),
                    ratio=round(ours_s / bare_s, 3),
                    peak_rss_mib=round(peak / 2**20, 1),
                    rss_limit_mib=round(limit / 2**20, 1),
                    bare_peak_rss_mib=round(max(r for _, r in bare) / 2**20, 1),
                    mib_per_s=round(bases / ours_s / 2**20, 1),
                    human_assembly_s=round(ours_s * scale, 1),
                    human_assembly_peak_rss_gib=round(peak * scale / 2**30, 2),
                    meets_targets=ours_s <= 3 * bare_s and peak <= limit,
                )
            )
    return figures


BENCHWORK_TIMEOUT_S = 300


def innermost_frame(dump: str) -> str:
    """The innermost Python frame of the signalled thread in a faulthandler dump (`File "x.py", line 3 in f`), or what
    the dump shows instead."""
    lines = dump.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Current thread"):
            frames = [x.strip() for x in lines[index + 1 :] if x.startswith("  ")]
            return frames[0] if frames else "no Python frame"
    return "no stack (it was still starting)"


def _benchwork(mode: str, world: int, threads: int, steps: int, save: Path, *, micro: int = 2, warmup: int = 5) -> dict[str, Any]:
    """Rank 0's JSON line from `world` benchwork processes (each `threads` threads, `micro` micro-batches per step):
    seconds per step and bytes per step; rank 0 saves the weights to `save`."""
    import json
    import subprocess
    import sys

    from geno_pipeline.distributed import JOB_VARIABLES
    from geno_pipeline.distributed.smoke import free_port

    base = {k: v for k, v in child_env().items() if k not in JOB_VARIABLES}  # the worker imports tools.benchwork
    port = str(free_port())
    command = [sys.executable, "-m", "tools.benchwork", "--mode", mode, "--steps", str(steps)]
    command += ["--threads", str(threads), "--save", str(save), "--micro", str(micro), "--warmup", str(warmup)]
    procs = []
    for rank in range(world):
        env = base | {"OMP_NUM_THREADS": str(threads)}
        if world > 1:
            env |= {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + BENCHWORK_TIMEOUT_S
    hung: list[int] = []
    try:
        outs = [proc.communicate(timeout=max(deadline - time.monotonic(), 0.0)) for proc in procs]
    except subprocess.TimeoutExpired:
        hung = [rank for rank, proc in enumerate(procs) if proc.poll() is None]
        for rank in hung:  # each prints its threads' stacks (benchwork registers SIGUSR1 with faulthandler)
            procs[rank].send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        for proc in procs:  # then every worker is stopped: none is left behind
            proc.kill()
        outs = [proc.communicate() for proc in procs]
    errs = [err for _, err in outs]
    problems = [f"rank {rank} at {innermost_frame(errs[rank])}" for rank in hung] + [
        _exit_words(rank, proc.returncode, errs[rank]) for rank, proc in enumerate(procs) if rank not in hung and proc.returncode
    ]
    fix = "fix: rerun `python -m tools.bench`, and report it with this message if it happens again"
    if hung:
        raise DistributedError(
            f"bench: benchwork {mode} x{world} did not finish in {BENCHWORK_TIMEOUT_S} s ({'; '.join(problems)}); "
            f"its processes were stopped; {fix}"
        )
    if problems:
        raise DistributedError(f"bench: benchwork {mode} x{world} failed ({'; '.join(problems)}); {fix}")
    line: dict[str, Any] = json.loads(outs[0][0].strip().splitlines()[-1])
    return line


def _exit_words(rank: int, code: int | None, stderr: str) -> str:
    """`rank N exited with status S: <the last line it wrote to stderr>`."""
    lines = stderr.strip().splitlines()
    return f"rank {rank} exited with status {code}: {lines[-1] if lines else 'nothing on stderr'}"


TREE_VS_DDP_TARGET = 1.15


def bench_traffic(world: int, d: Path, steps: int = 10, micro: int = 4) -> tuple[ReductionTraffic, bool]:
    """Bytes per step of the tree, the all-gather and DDP at `world` workers; and whether tree and gather agree bitwise."""
    runs = {mode: _benchwork(mode, world, 1, steps, d / f"{mode}{world}.npy", micro=micro, warmup=2) for mode in ("tree", "gather", "ddp")}
    gradient = int(runs["tree"]["gradient_values"]) * 4
    ring = round(2 * (world - 1) * gradient / world)

    def wire(mode: str) -> float | None:
        value = runs[mode]["loopback_bytes_per_step"]
        return None if value is None else round(value / world, 1)

    same = np.load(d / f"tree{world}.npy").tobytes() == np.load(d / f"gather{world}.npy").tobytes()
    figures = ReductionTraffic(
        world_size=world, micro_batches=micro, gradient_bytes=gradient, ring_bytes=ring,
        tree_received_bytes=runs["tree"]["received_bytes_per_step"], gather_received_bytes=runs["gather"]["received_bytes_per_step"],
        ddp_allreduce_bytes=runs["ddp"]["sent_bytes_per_step"],
        tree_loopback_bytes=wire("tree"), gather_loopback_bytes=wire("gather"), ddp_loopback_bytes=wire("ddp"),
        tree_vs_ring=round(runs["tree"]["received_bytes_per_step"] / ring, 4),
    )  # fmt: skip
    return figures, same


def bench_distributed(steps: int, pairs: int) -> tuple[DistributedBench, list[BenchEntry]]:
    """2 workers x 1 thread against 1 worker x 2 threads; the tree against DDP in alternate runs; the bytes each moves
    at 2 and 4 workers; and which runs agree bit for bit."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="geno-bench-dist-") as tmp:
        d = Path(tmp)
        one_1 = _benchwork("tree", 1, 1, steps, d / "w11.npy")["seconds_per_step"]
        one_2 = _benchwork("tree", 1, 2, steps, d / "w12.npy")["seconds_per_step"]
        tree_s: list[float] = []
        ddp_s: list[float] = []
        for _ in range(pairs):
            tree_s.append(_benchwork("tree", 2, 1, steps, d / "w21.npy")["seconds_per_step"])
            ddp_s.append(_benchwork("ddp", 2, 1, steps, d / "ddp.npy")["seconds_per_step"])
        w11, w12, w21, wddp = (np.load(d / f"{n}.npy") for n in ("w11", "w12", "w21", "ddp"))
        measured_traffic = [bench_traffic(world, d) for world in (2, 4)]
    two, ddp = statistics.median(tree_s), statistics.median(ddp_s)
    ratios = [round(t / r, 4) for t, r in zip(tree_s, ddp_s, strict=True)]
    ratio = statistics.median(ratios)
    figures = DistributedBench(
        steps=steps,
        one_worker_1_thread_s=round(one_1, 6),
        one_worker_2_threads_s=round(one_2, 6),
        two_workers_1_thread_s=round(two, 6),
        two_workers_ddp_s=round(ddp, 6),
        tree_vs_ddp_pair_ratios=ratios,
        tree_vs_ddp_ratio=ratio,
        meets_target=ratio <= TREE_VS_DDP_TARGET,
        traffic=[t for t, _ in measured_traffic],
        bitwise_1x1_vs_2x1=w11.tobytes() == w21.tobytes(),
        bitwise_1x2_vs_1x1=w12.tobytes() == w11.tobytes(),
        bitwise_gather_vs_tree=all(same for _, same in measured_traffic),
        max_abs_diff_1x2_vs_1x1=float(np.abs(w12 - w11).max()),
        max_abs_diff_ddp_vs_fixed=float(np.abs(wddp - w21).max()),
    )
    detail = f"{steps} steps of draw + encode + update, default model, batch 64 in 2 micro-batches, gloo on 127.0.0.1"
    entries = [
        _entry("two_workers_1_thread_vs_one_worker_2_threads", two, one_2, detail),
        _entry("tree_reduction_vs_ddp_2_workers", two, ddp, f"{detail}; medians of {pairs} alternate runs each"),
    ]
    return figures, entries


def run_bench(layout: Layout, *, quick: bool, fasta_mib: int | None = None) -> BenchReport:
    """Run every benchmark and write reports/bench.json."""
    fasta_bases = (fasta_mib if fasta_mib is not None else 64 if quick else 512) << 20
    stage = tiny_and_default_profiles(layout.root, quick=quick, repeats=2 if quick else 5)
    entries = [
        bench_samplers(200_000 if quick else 1_000_000, 3 if quick else 5),
        *bench_train_step(20 if quick else 60, 3 if quick else 5),
        bench_collapse(256 if quick else 1024, 256),
        bench_sha256(16 if quick else 64, 3),
        bench_preflight(layout.root, 3 if quick else 7),
        bench_help(5 if quick else 15),
    ]
    distributed, dist_entries = bench_distributed(20 if quick else 60, 3 if quick else 7)
    entries += dist_entries
    report = BenchReport(
        quick=quick,
        entries=entries,
        collapse_peak_rss_mib_n16384=None if quick else collapse_peak_rss_mib(),
        fasta_ingest=bench_fasta_ingest(layout.root, fasta_bases, 1 if quick else 3),
        distributed=distributed,
        train_stage=stage,
    )
    write_json(layout.bench_report, report, schema="bench")
    return report


def run_bench_cli(layout: Layout, *, quick: bool, fasta_mib: int | None = None, scaling: bool = False) -> int:
    """Print the ratios (or, with `scaling`, the scaling curves); returns 0."""
    if scaling:
        print("bench: scaling curves (minutes; --quick is faster) ...", flush=True)
        curves = run_scaling(layout, quick=quick)
        for c in curves.curves:
            print(
                f"bench: scaling: {c.name}: {c.y} ~ {c.x}^{c.exponent:.2f} over every size, ^{c.exponent_largest:.2f} over the three "
                f"largest ({c.growth}); {c.csv}"
            )
        print(f"bench: wrote {layout.rel(layout.scaling_report)}; draw them with `dvc plots show`")
        return 0
    print("bench: measuring (the full run takes a few minutes; --quick is faster) ...", flush=True)
    report = run_bench(layout, quick=quick, fasta_mib=fasta_mib)
    for s in report.train_stage:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in s.parts.items())
        print(
            f"bench: train_stage_end_to_end_vs_bare_loop ({s.profile}, {s.steps} steps): ratio {s.ratio:.4f} (ours {s.ours_s:.3f}s vs "
            f"bare {s.bare_s:.3f}s; target <= 1.10{'' if s.meets_target else ' -- TARGET MISSED'}; {len(s.pair_ratios)} alternate pairs "
            f"from {min(s.pair_ratios):.4f} to {max(s.pair_ratios):.4f}); seconds by part: {parts}; "
            f"checkpoint writer ({s.writer}) busy {s.writer_s:.3f}s beside the loop; "
            f"its {s.evaluations} held-out evaluations and {s.checkpoints} durable checkpoint writes alone take {s.required_s:.3f}s: "
            f"floor ratio {s.floor_ratio:.4f}; cpu_threads {s.cpu_threads}, prefetch {'on' if s.prefetch else 'off'}, "
            f"input wait {s.input_wait_ms_per_step} ms/step"
        )
    for e in report.entries:
        print(f"bench: {e.name}: ratio {e.ratio:.4f} (ours {e.ours_s:.4f}s vs reference {e.reference_s:.4f}s; {e.detail})")
    if report.distributed is not None:
        d = report.distributed
        print(
            f"bench: distributed, s/step: 1 worker x 1 thread {d.one_worker_1_thread_s:.4f}, 1 x 2 threads {d.one_worker_2_threads_s:.4f}, "
            f"2 workers x 1 thread {d.two_workers_1_thread_s:.4f}, 2 workers DDP {d.two_workers_ddp_s:.4f}"
        )
        print(
            f"bench: tree reduction vs DDP, 2 workers x 1 thread: median ratio {d.tree_vs_ddp_ratio:.4f} of "
            f"{len(d.tree_vs_ddp_pair_ratios)} alternate pairs ({', '.join(f'{r:.3f}' for r in d.tree_vs_ddp_pair_ratios)}; "
            f"target <= {TREE_VS_DDP_TARGET}{'' if d.meets_target else ' -- TARGET MISSED'})"
        )
        for t in d.traffic:
            wire = "" if t.tree_loopback_bytes is None else (
                f"; on the loopback wire per rank: tree {t.tree_loopback_bytes:.0f}, all-gather {t.gather_loopback_bytes:.0f}, "
                f"DDP {t.ddp_loopback_bytes:.0f}"
            )  # fmt: skip
            print(
                f"bench: bytes received per rank per step, W={t.world_size}, M={t.micro_batches}, gradient {t.gradient_bytes} B: "
                f"tree {t.tree_received_bytes:.0f} ({t.tree_vs_ring:.4f} x the ring all-reduce's 2(W-1)/W = {t.ring_bytes}), "
                f"all-gather {t.gather_received_bytes:.0f}, DDP all-reduces {t.ddp_allreduce_bytes:.0f}{wire}"
            )
        print(
            f"bench: same bits 1x1 vs 2x1: {d.bitwise_1x1_vs_2x1}; all-gather vs tree: {d.bitwise_gather_vs_tree}; "
            f"1x2 vs 1x1: {d.bitwise_1x2_vs_1x1} (max |diff| {d.max_abs_diff_1x2_vs_1x1:.3g}); "
            f"DDP vs tree max |diff| {d.max_abs_diff_ddp_vs_fixed:.3g}"
        )
    if report.collapse_peak_rss_mib_n16384 is not None:
        print(f"bench: compute_collapse_metrics peak RSS growth at N=16384, D=256: {report.collapse_peak_rss_mib_n16384} MiB")
    for f in report.fasta_ingest:
        print(
            f"bench: data stage on a {f.file_bytes / 2**20:.0f} MiB {f.format} FASTA ({f.bases} bases): ratio {f.ratio:.3f} "
            f"(ours {f.ours_s:.3f}s vs bare read + table pass {f.bare_s:.3f}s; target <= 3), peak RSS {f.peak_rss_mib} MiB "
            f"(target <= {f.rss_limit_mib} MiB; bare {f.bare_peak_rss_mib} MiB), {f.mib_per_s} MiB/s"
        )
        print(
            f"bench: a 3.1 Gb assembly ({f.format}) would take about {f.human_assembly_s:.0f} s and at most "
            f"{f.human_assembly_peak_rss_gib} GiB here{'' if f.meets_targets else ' -- TARGET MISSED'}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.bench`."""
    p = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Measure ratios in one run: training step vs bare torch loop, deterministic vs not, collapse metrics vs "
        "pure Python, samplers vs per-draw loop, sha256 vs coreutils, preflight vs `import torch`, and the data stage on a "
        "generated FASTA (plain and bgzip) vs a bare read + lookup-table pass, with its peak RSS. The headline is the whole train "
        "stage (tiny and default profile) vs a bare end-to-end loop of the same sampling, encoding and optimizer math, with "
        "the stage's seconds by part.",
    )
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--quick", action="store_true", help="fewer repetitions, a 64 MiB FASTA")
    p.add_argument("--fasta-mib", type=int, default=None, help="bases (MiB) of the generated FASTA for the ingest bench (default 512)")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="instead, measure how costs grow: train step vs batch size and width, data stage time and peak RSS vs genome "
        "length, collapse metrics vs N, verify vs bundle size; CSVs under reports/bench/ (DVC plots), fits in scaling.json",
    )

    def handle(args: argparse.Namespace) -> int:
        return run_bench_cli(Layout.for_root(args.root), quick=args.quick, fasta_mib=args.fasta_mib, scaling=args.scaling)

    return run_tool("bench", p, handle, argv)


if __name__ == "__main__":
    sys.exit(main())

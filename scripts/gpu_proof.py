"""The GPU proof: what only a CUDA machine can show, in one command of a few minutes (`bash scripts/gpu_proof.sh`).

1. `geno-pipeline preflight` on the real GPU: the table, and reports/preflight.json.
2. The tiny profile trained and released twice on cuda:0 in two fresh projects: the release SHA256SUMS and every
   training output compared byte for byte.
3. The tiny profile SIGKILLed once its first checkpoint is on disk, then `train --resume auto` and release: compared
   with (2) byte for byte.
4. The default profile's first 300 steps on the GPU and on the CPU, with and without prefetch: steps per second, and how
   long each step waited for its batch (drawn and encoded on the CPU), i.e. how long the GPU waits for the CPU.
5. `python -m pytest -q tests/test_gpu_preflight.py tests/test_gpu_nodes.py` on the machine.

Runs the stages directly (no DVC), with the repository on PYTHONPATH; writes its logs and a summary.json to the
folder given as the first argument (default: $OUT, else ./gpu-proof). On a machine without a usable CUDA device it
says so and exits 2 before doing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "params_tiny.yaml"
DEFAULT_STEPS = 300
EXIT_NO_GPU = 2


def say(text: str, log: Path | None = None) -> None:
    print(text, flush=True)
    if log is not None:
        with log.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")


def cuda_or_exit() -> str:
    """The GPU's name, or a clear message and exit 2 when torch or CUDA is not usable here."""
    try:
        import torch
    except Exception as exc:  # a missing torch, or a shared library it cannot load
        print(f"gpu_proof: torch cannot be imported ({type(exc).__name__}: {exc}); install torch, then run again", file=sys.stderr)
        raise SystemExit(EXIT_NO_GPU) from None
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
        print(
            f"gpu_proof: no usable CUDA device on this machine (torch {torch.__version__}, {build}); "
            "this proof needs an NVIDIA GPU, its driver and a CUDA build of torch. Nothing was run.",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NO_GPU)
    return str(torch.cuda.get_device_name(0))


def project(work: Path, name: str, params: dict[str, Any]) -> Path:
    """A fresh project: the repository's files (without outputs) and `params` as params.yaml."""
    import yaml

    root = work / name
    ignore = shutil.ignore_patterns(
        ".git", ".venv", ".whl", "artifacts", "reports", "gpu-proof", "__pycache__", ".dvc", "*.egg-info", "mutants"
    )
    shutil.copytree(REPO, root, ignore=ignore)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return root


def params_with(path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    import yaml

    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    return dict(params)


def gp(root: Path, log: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`geno-pipeline ARGS` in `root`, its output appended to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", *args], cwd=root, capture_output=True, text=True, env=env)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ geno-pipeline {' '.join(args)}  (in {root.name}, exit {proc.returncode}, {time.perf_counter() - started:.1f} s)\n")
        handle.write(proc.stdout + proc.stderr + "\n")
    if check and proc.returncode != 0:
        raise RuntimeError(f"geno-pipeline {' '.join(args)} exited {proc.returncode} in {root}: {(proc.stderr or proc.stdout)[-600:]}")
    return proc


def outputs(root: Path) -> dict[str, bytes]:
    """Every declared output a run writes that must be byte-identical: the release bundle, the training artifacts
    (checkpoints excepted: a resumed run keeps other ones) and the train reports."""
    files: dict[str, bytes] = {}
    for folder in ("artifacts/release", "artifacts/train"):
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and "/checkpoints/" not in rel:
                files[rel] = path.read_bytes()
    for rel in ("reports/train.json", "reports/metrics.json", "reports/release.json"):
        files[rel] = (root / rel).read_bytes()
    return files


def differing(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(name for name in set(a) | set(b) if a.get(name) != b.get(name))


def compared(a: dict[str, bytes], b: dict[str, bytes]) -> str:
    diff = differing(a, b)
    return f"{len(b)} output files compared: " + ("identical" if not diff else "DIFFER: " + ", ".join(diff))


def tiny_pipeline(root: Path, log: Path, *, train: tuple[str, ...] = ()) -> None:
    for stage in ("data", "preflight"):
        gp(root, log, stage)
    if not train:
        gp(root, log, "train", "--no-progress")
    for args in train:
        gp(root, log, *args.split())
    gp(root, log, "sweep")
    gp(root, log, "release")


def killed_at_first_checkpoint(root: Path, log: Path) -> int:
    """Start `train`, SIGKILL it once its first checkpoint is complete on disk; the step it was killed after."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "geno_pipeline", "train", "--no-progress"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoints = root / "artifacts" / "train" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        done = sorted(p for p in checkpoints.glob("step-*") if (p / "SHA256SUMS").is_file()) if checkpoints.is_dir() else []
        if done:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            say(f"  SIGKILLed train after {done[0].name} was written", log)
            return int(done[0].name.split("-")[1])
        time.sleep(0.005)
    proc.wait()
    say("  train finished before a checkpoint could be caught: the resume below starts from its last checkpoint", log)
    return -1


def loop_figures(root: Path, steps: int) -> dict[str, Any]:
    """Steps per second and the per-step split from reports/runtime/train.json."""
    facts = json.loads((root / "reports" / "runtime" / "train.json").read_text())["facts"]
    parts = {k[len("loop_") : -len("_seconds")]: v for k, v in facts.items() if k.startswith("loop_") and k.endswith("_seconds")}
    once = float(facts.get("source_encoding_seconds", 0.0))  # the sources encoded once before the first step
    parts["encoding"] = parts.get("encoding", 0.0) - once
    total = sum(parts.values()) or 1.0
    wait_ms = float(facts.get("input_wait_ms_per_step") or 0.0)
    return {
        "steps_per_second": facts.get("steps_per_second"),
        "loop_steps_per_second": round(steps / total, 2),
        "source_encoding_seconds_once": round(once, 3),
        "ms_per_step": {name: round(1000 * seconds / steps, 3) for name, seconds in parts.items()},
        "prefetch": facts.get("prefetch"),
        "input_wait_ms_per_step": wait_ms,
        "input_share": round(wait_ms * steps / 1000 / total, 3),
    }


def default_runs(work: Path, log: Path, device: str, steps: int) -> dict[str, dict[str, Any]]:
    """The default profile's first `steps` on `device` with prefetch on and off: one dataset and preflight, copied for
    each (`--prefetch` is a command-line choice, not a param); the figures of each."""
    base = project(work, f"default-{device.replace(':', '')}", params_with(REPO / "params.yaml", runtime={"device": device}))
    gp(base, log, "data")
    gp(base, log, "preflight")
    figures = {}
    for prefetch in ("on", "off"):
        root = work / f"{base.name}-prefetch-{prefetch}"
        shutil.copytree(base, root, symlinks=True)
        gp(root, log, "train", "--no-progress", "--stop-after-step", str(steps), "--prefetch", prefetch)
        figures[prefetch] = loop_figures(root, steps)
    return figures


def gpu_tests(out: Path, log: Path) -> int:
    """Step 5: the GPU preflight tests on this machine; pytest's exit code."""
    say("\n== 5. the GPU preflight tests on this machine", log)
    # one process, without pyproject's `-n auto`: the GPU machine may have no pytest-xdist
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=-ra"]
    tests = subprocess.run([*command, "tests/test_gpu_preflight.py", "tests/test_gpu_nodes.py"], cwd=REPO, capture_output=True, text=True)
    lines = (tests.stdout + tests.stderr).strip().splitlines()
    say(lines[-1] if lines else "pytest printed nothing", log)
    (out / "pytest.log").write_text(tests.stdout + tests.stderr, encoding="utf-8")
    return tests.returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path(os.environ.get("OUT") or "gpu-proof"), help="where logs go")
    parser.add_argument(
        "--cpu-rehearsal",
        action="store_true",
        help="run every step on the CPU instead, to check this script where no GPU is (proves nothing about GPUs)",
    )
    parser.add_argument("--default-steps", type=int, default=DEFAULT_STEPS, help=f"steps of the default profile to time ({DEFAULT_STEPS})")
    parser.add_argument("--skip-tests", action="store_true", help="leave out step 5 (the GPU preflight tests)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    device = "cpu" if args.cpu_rehearsal else "cuda:0"
    name = "CPU rehearsal (no GPU involved)" if args.cpu_rehearsal else cuda_or_exit()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_proof.log"
    log.write_text("", encoding="utf-8")
    summary: dict[str, Any] = {"gpu": name}
    work = Path(tempfile.mkdtemp(prefix="gpu-proof-"))
    started = time.perf_counter()
    try:
        say(f"gpu_proof: {name}; scratch projects in {work}", log)
        tiny = params_with(TINY, runtime={"device": device})

        say(f"\n== 1. preflight on {device}", log)
        first = project(work, "tiny-a", tiny)
        gp(first, log, "data")
        table = gp(first, log, "preflight", check=False)
        say(table.stdout.rstrip() + table.stderr.rstrip(), log)
        shutil.copy(first / "reports" / "preflight.json", out / "preflight.json")
        summary["preflight_exit"] = table.returncode
        if table.returncode != 0:
            say("gpu_proof: preflight is not ok on this GPU; the rest needs it to be", log)
            return 1

        say(f"\n== 2. the tiny profile twice on {device}", log)
        gp(first, log, "train", "--no-progress")
        gp(first, log, "sweep")
        gp(first, log, "release")
        second = project(work, "tiny-b", tiny)
        tiny_pipeline(second, log)
        a, b = outputs(first), outputs(second)
        sums = (first / "artifacts" / "release" / "SHA256SUMS").read_text()
        say(f"  run A SHA256SUMS:\n{sums}", log)
        say(f"  run B SHA256SUMS:\n{(second / 'artifacts' / 'release' / 'SHA256SUMS').read_text()}", log)
        summary["twice_identical"] = not differing(a, b)
        say(f"  {compared(a, b)}", log)

        say("\n== 3. killed at a checkpoint, resumed", log)
        third = project(work, "tiny-c", tiny)
        gp(third, log, "data")
        gp(third, log, "preflight")
        summary["killed_after_step"] = killed_at_first_checkpoint(third, log)
        gp(third, log, "train", "--no-progress", "--resume", "auto")
        gp(third, log, "sweep")
        gp(third, log, "release")
        c = outputs(third)
        say(f"  resumed SHA256SUMS:\n{(third / 'artifacts' / 'release' / 'SHA256SUMS').read_text()}", log)
        summary["resume_identical"] = not differing(a, c)
        say(f"  with run A: {compared(a, c)}", log)

        say(f"\n== 4. the default profile, first {args.default_steps} steps, GPU and CPU", log)
        for where in ("cpu",) if args.cpu_rehearsal else ("cuda:0", "cpu"):
            for prefetch, figures in default_runs(work, log, where, args.default_steps).items():
                summary[f"default_{where}" + ("" if prefetch == "on" else "_no_prefetch")] = figures
                say(f"  {where}, prefetch {prefetch}: {figures['steps_per_second']} steps/s in the update alone, "
                    f"{figures['loop_steps_per_second']} steps/s in the loop (after {figures['source_encoding_seconds_once']} s "
                    f"encoding the sources once); ms per step {figures['ms_per_step']}; the loop waited "
                    f"{figures['input_wait_ms_per_step']} ms per step for its input ({100 * figures['input_share']:.0f}% of the "
                    "loop, time the device waits)", log)  # fmt: skip

        summary["pytest_exit"] = 0 if args.skip_tests else gpu_tests(out, log)
    finally:
        summary["seconds"] = round(time.perf_counter() - started, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(work, ignore_errors=True)
    ok = bool(summary.get("twice_identical") and summary.get("resume_identical") and summary.get("pytest_exit") == 0)
    say(f"\ngpu_proof: {'all identical' if ok else 'NOT all as promised'} ({summary['seconds']} s); summary: {out / 'summary.json'}", log)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

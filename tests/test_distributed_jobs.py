"""Real launched jobs (slow): the tiny project trained by 2 and 4 gloo workers on loopback: world-size invariant,
killed and resumed byte for byte, hung, refused at another world size or on a held port, and launched by torchrun."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.numpy import load_file

from tests.conftest import REPO, job_env, write_params
from tests.fakes import process_alive, processes_of

# ---------------------------------------------------------------- real two-worker jobs (gloo on loopback)

STEPS = 120


def gp(root: Path, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "geno_pipeline", *args], cwd=root, env=job_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"geno-pipeline {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _set(root: Path, section: str, **values: object) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _declared(root: Path) -> dict[str, str]:
    """sha256 of every declared output of train and release."""
    files = [p for d in ("artifacts/train", "artifacts/release", "reports/plots") for p in (root / d).rglob("*") if p.is_file()]
    files += [root / "reports/train.json", root / "reports/metrics.json", root / "reports/release.json"]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def _clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("train", "release", "runtime"))
    return dst


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _local_rank(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in env if e.startswith(b"LOCAL_RANK=")).split(b"=")[1])


def _start_and_wait_for_step(root: Path, step: int, world: int = 2) -> tuple[subprocess.Popen[str], dict[int, int]]:
    """Start a `world`-worker train; return it and {local rank: pid} once metrics.jsonl has `step` lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geno_pipeline", "train", "--no-progress"],
        cwd=root, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = root / "artifacts/train/metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.is_file() and metrics.read_text().count("\n") >= step:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    workers = {_local_rank(pid): pid for pid in _children(proc.pid)}
    assert sorted(workers) == list(range(world)), workers
    return proc, workers


@pytest.fixture(scope="module")
def dist_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile with 2 workers, 4 micro-batches and 120 steps: data and preflight done."""
    root = tmp_path_factory.mktemp("dist") / "base"
    root.mkdir()
    write_params(root)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    _set(root, "runtime", nproc_per_node=2, dist_timeout_s=20)
    _set(root, "train", steps=STEPS, checkpoint_every_steps=20, micro_batches=4)  # 4 leaves: the tree's order shows
    _set(root, "collapse", log_every_steps=20)
    gp(root, "data")
    gp(root, "preflight")
    return root


@pytest.fixture(scope="module")
def straight(dist_project: Path) -> Path:
    """One uninterrupted 2-worker run with its release."""
    root = _clone(dist_project, dist_project.parent / "straight")
    out = gp(root, "train", "--no-progress")
    assert "launching 2 workers" in out.stdout and "train: completed: trained 120 steps" in out.stdout
    gp(root, "release")
    return root


def _clone_at(base: Path, name: str, world: int) -> Path:
    """A clone of the base project for `world` workers, preflight rerun (the fingerprint names the world size)."""
    root = _clone(base, base.parent / name)
    if world != 2:
        _set(root, "runtime", nproc_per_node=world)
        gp(root, "preflight")
    return root


@pytest.fixture(scope="module")
def straight4(dist_project: Path) -> Path:
    """One uninterrupted 4-worker run (one micro-batch each) with its release."""
    root = _clone_at(dist_project, "straight4", 4)
    out = gp(root, "train", "--no-progress")
    assert "launching 4 workers" in out.stdout and "train: completed: trained 120 steps" in out.stdout
    gp(root, "release")
    return root


def _gradient_bytes(root: Path) -> int:
    """Bytes of the flat gradient (float32): one `exp_avg` per trained parameter in the last checkpoint's optimizer."""
    state = load_file(root / f"artifacts/train/checkpoints/step-{STEPS:06d}/optimizer.safetensors")
    return 4 * sum(t.size for name, t in state.items() if name.endswith(".exp_avg"))


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_distributed_tree_reduction_moves_what_a_ring_all_reduce_moves(straight: Path, straight4: Path, world: int) -> None:
    """Measured by the group's byte counters: per step each rank receives about 2(W-1)/W of the gradient (the shard
    exchange and the gather of the summed shards), plus the micro-batch statistics."""
    root = straight if world == 2 else straight4
    facts = json.loads((root / "reports/runtime/train.json").read_text())["facts"]
    assert facts["gradient_reduction"] == "tree"
    ring = 2 * (world - 1) / world * _gradient_bytes(root)
    assert ring <= facts["collective_bytes_received_per_step"] <= ring * 1.05 + 2048, (facts, ring)
    assert ring <= facts["collective_bytes_sent_per_step"] <= ring * 1.05 + 2048, (facts, ring)


def _torchrun(root: Path, workers: int) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(workers), "-m", "geno_pipeline",
               "train", "--no-progress"]  # fmt: skip
    return subprocess.run(command, cwd=root, env=job_env(), capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_distributed_the_external_launcher_flow_of_the_readme(straight: Path) -> None:
    """torchrun after a plain preflight stops with the fix that works; after `WORLD_SIZE=2 geno-pipeline preflight` the
    launched job trains the same numbers as the self-launched 2-worker run."""
    readme = (REPO / "docs/distributed.md").read_text(encoding="utf-8")
    assert "WORLD_SIZE=2 geno-pipeline preflight\ntorchrun --standalone --nproc_per_node 2 -m geno_pipeline train\n" in readme
    root = _clone(straight.parent / "base", straight.parent / "torchrun")
    _set(root, "runtime", nproc_per_node=1)
    gp(root, "preflight")
    refused = _torchrun(root, 2)
    assert refused.returncode != 0
    assert "fix: rerun preflight with the launcher's world size, on each node: `WORLD_SIZE=2 geno-pipeline preflight`" in refused.stderr
    assert not (root / "artifacts/train/metrics.jsonl").exists()
    env = job_env() | {"WORLD_SIZE": "2"}
    subprocess.run([sys.executable, "-m", "geno_pipeline", "preflight"], cwd=root, env=env, capture_output=True, text=True, check=True,
                   timeout=240)  # fmt: skip
    launched = _torchrun(root, 2)
    assert launched.returncode == 0, launched.stderr[-2000:]
    for name in ("metrics.jsonl", "collapse.jsonl"):
        assert (root / "artifacts/train" / name).read_bytes() == (straight / "artifacts/train" / name).read_bytes()
    a, b = load_file(root / "artifacts/train/model.safetensors"), load_file(straight / "artifacts/train/model.safetensors")
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(("world", "victim"), [(2, 1), (4, 2)])
def test_distributed_sigkill_of_a_worker_stops_the_job_and_resume_is_byte_identical(
    request: pytest.FixtureRequest, world: int, victim: int
) -> None:
    """A run from scratch, killed mid-way (a worker SIGKILLed) and resumed, gives every declared output of the
    uninterrupted run, release included: so it also shows that two runs from scratch give the same bytes."""
    straight: Path = request.getfixturevalue("straight" if world == 2 else "straight4")
    root = _clone_at(straight.parent / "base", f"killed{world}", world)
    proc, workers = _start_and_wait_for_step(root, 50, world=world)
    os.kill(workers[victim], signal.SIGKILL)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 9, err
    assert f"worker rank {victim} (pid {workers[victim]}): killed by SIGKILL" in err
    assert "resume with `geno-pipeline train --resume auto`" in err
    assert took < 20  # the collective timeout (dist_timeout_s: 20) bounds it; the launcher notices in 0.1 s
    assert not any(process_alive(pid) for pid in workers.values())
    assert "Traceback" not in err
    gp(root, "train", "--resume", "auto", "--no-progress")
    gp(root, "release")
    assert _declared(root) == _declared(straight)
    assert gp(root, "verify", "artifacts/release").returncode == 0
    assert not list((root / "reports").glob("runtime/train.json.*"))  # one runtime report, from rank 0


@pytest.mark.slow
def test_distributed_a_hung_worker_runs_into_the_timeout(straight: Path) -> None:
    """A worker stopped (SIGSTOP) mid-run ends the job with exit 9 once runtime.dist_timeout_s passes. The run is far
    too long to finish first, and the timeout leaves a loaded machine's slow steps room, so the verdict does not depend
    on how busy the machine is."""
    root = _clone(straight.parent / "base", straight.parent / "hung")
    _set(root, "runtime", dist_timeout_s=10)
    _set(root, "train", steps=1_000_000, checkpoint_every_steps=1_000_000)
    _set(root, "collapse", log_every_steps=1_000_000)
    gp(root, "preflight")
    proc, workers = _start_and_wait_for_step(root, 30)
    os.kill(workers[1], signal.SIGSTOP)  # a real hang: the process is alive and never answers
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        for pid in workers.values():
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    took = time.monotonic() - start
    assert proc.returncode == 9, err
    assert "hung longer than runtime.dist_timeout_s (10 s)" in err and "Traceback" not in err
    assert not any(process_alive(pid) for pid in workers.values())
    # the timeout, then SHUTDOWN_GRACE_S (5 s) before the stopped worker is SIGKILLed; torch's own 30 s would be >= 40
    assert took < 10 + 30, took


@pytest.mark.slow
def test_distributed_world_sizes_one_two_and_four_give_the_same_numbers(straight: Path, straight4: Path) -> None:
    """The moonshot: with train.micro_batches fixed (4), 1, 2 and 4 workers give the same weights, optimizer state and
    logs; only the files that name the run's identity (which includes the world size) differ."""
    one = _clone(straight.parent / "base", straight.parent / "one")
    _set(one, "runtime", nproc_per_node=1)
    gp(one, "preflight")
    out = gp(one, "train", "--no-progress")
    assert "launching" not in out.stdout
    last = f"artifacts/train/checkpoints/step-{STEPS:06d}"
    for other in (straight, straight4):
        for name in ("metrics.jsonl", "collapse.jsonl"):
            assert (one / "artifacts/train" / name).read_bytes() == (other / "artifacts/train" / name).read_bytes()
        assert (one / "reports/metrics.json").read_bytes() == (other / "reports/metrics.json").read_bytes()
        for rel in ("artifacts/train/model.safetensors", f"{last}/model.safetensors", f"{last}/optimizer.safetensors"):
            a, b = load_file(one / rel), load_file(other / rel)
            assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a), rel
        assert (one / "artifacts/train/train.log").read_text() != (other / "artifacts/train/train.log").read_text()  # run ids
    assert json.loads((one / "reports/runtime/train.json").read_text())["facts"]["gradient_reduction"] == "local"


@pytest.mark.slow
def test_distributed_resume_at_another_world_size_is_refused(straight: Path) -> None:
    root = straight.parent / "other-world"
    shutil.copytree(straight, root)
    _set(root, "runtime", nproc_per_node=1)
    gp(root, "preflight")
    before = _declared(root)
    proc = gp(root, "train", "--resume", "auto", check=False)
    assert proc.returncode == 5, proc.stderr
    assert "world_size: checkpoint was written by 2 worker(s), this run has 1" in proc.stderr
    assert "params runtime.nproc_per_node: checkpoint has 2, this run has 1" in proc.stderr
    assert _declared(root) == before


@pytest.mark.slow
def test_distributed_sigkill_of_the_launcher_leaves_no_worker(straight: Path) -> None:
    root = _clone(straight.parent / "base", straight.parent / "launcher-killed")
    proc, workers = _start_and_wait_for_step(root, 10)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10  # the kernel's SIGKILLs land at once; a loaded machine takes a moment to reap them
    while (processes_of(root) or any(process_alive(pid) for pid in workers.values())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in workers.values())  # the kernel killed them with the launcher (PR_SET_PDEATHSIG)
    assert processes_of(root) == []  # nor did rank 0's checkpoint writer process


@pytest.mark.slow
def test_distributed_a_listener_on_the_rendezvous_port_stops_the_launch_at_once(straight: Path) -> None:
    """MASTER_PORT held by a listener that never answers (or another job's store): `train` exits 9 at once naming the
    port and the fix, instead of waiting on the rendezvous; nothing is trained."""
    import socket

    root = _clone(straight.parent / "base", straight.parent / "port-held")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "geno_pipeline", "train", "--no-progress"], cwd=root, env=job_env() | {"MASTER_PORT": str(port)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 9 and "Traceback" not in proc.stderr
    assert f"rendezvous port 127.0.0.1:{port} is in use" in proc.stderr and "set MASTER_PORT to a free port" in proc.stderr
    assert not (root / "artifacts/train/metrics.jsonl").exists()

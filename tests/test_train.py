"""Trainer: determinism, resume equivalence (new process, SIGKILL), tampering, non-finite guard, collapse."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from geno_pipeline.config import load_params
from geno_pipeline.errors import TrainingCheckpointError
from geno_pipeline.layout import Layout
from geno_pipeline.training.background import process_writer_available
from geno_pipeline.training.model import build_world_model
from geno_pipeline.training.stage import run_training
from tests.conftest import copy_project, run_main, write_params
from tests.fakes import process_alive, processes_of


def cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", *args, "--root", str(root)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tree(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tiny_released: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with its dataset and preflight fingerprint, trained straight once (this module's copy of the
    session's tiny pipeline, its release left out)."""
    return copy_project(tiny_released, tmp_path_factory.mktemp("train") / "project", without_release=True)


def clone(prepared: Path, dest: Path) -> Path:
    shutil.copytree(prepared, dest, ignore=shutil.ignore_patterns("train"))
    return dest


def test_train_two_runs_identical(prepared: Path, tmp_path: Path) -> None:
    other = clone(prepared, tmp_path / "other")
    cli(other, "train", "--no-progress")  # the command line's own process vs the in-process run of the fixture
    report = json.loads((other / "reports" / "train.json").read_text())
    assert report["status"] == "completed" and report["steps_completed"] == 12
    from geno_pipeline.openmp import USER_KEYS, WAIT_SETTING, wait_policy_fact

    facts = json.loads((other / "reports" / "runtime" / "train.json").read_text())["facts"]
    chosen = any(key in os.environ for key in USER_KEYS)  # the command keeps a user's own setting
    assert facts["openmp_wait"] == (wait_policy_fact(os.environ) if chosen else "=".join(WAIT_SETTING))
    straight = tree(prepared / "artifacts" / "train")
    assert tree(other / "artifacts" / "train") == straight
    assert "model.safetensors" in straight and "metrics.jsonl" in straight
    lines = (other / "artifacts" / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 13))


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 11))
def test_train_resume_equivalence_any_stop_step(prepared: Path, tmp_path_factory: pytest.TempPathFactory, k: int) -> None:
    from geno_pipeline.cli import main

    root = clone(prepared, tmp_path_factory.mktemp("resume") / "p")
    assert main(["train", "--no-progress", "--stop-after-step", str(k), "--root", str(root)]) == 0  # stopped in this process
    assert json.loads((root / "reports" / "train.json").read_text())["status"] == "stopped"
    cli(root, "train", "--no-progress", "--resume", "auto")  # resumed in a new one
    assert tree(root / "artifacts" / "train") == tree(prepared / "artifacts" / "train")
    for report in ("train.json", "metrics.json"):  # the path taken is not in any declared output
        assert (root / "reports" / report).read_bytes() == (prepared / "reports" / report).read_bytes()
    assert tree(root / "reports" / "plots") == tree(prepared / "reports" / "plots")
    assert json.loads((root / "reports" / "runtime" / "train.json").read_text())["facts"]["resumed_from_step"] == k


@pytest.mark.slow
def test_train_sigkill_then_resume_auto(tmp_path: Path) -> None:
    root = tmp_path / "kill"
    root.mkdir()
    write_params(root, train={"steps": 400, "checkpoint_every_steps": 25}, collapse={"log_every_steps": 50})
    shutil.copy(Path(__file__).resolve().parent.parent / "pyproject.toml", root / "pyproject.toml")
    from geno_pipeline.cli import main

    for args in (["data"], ["preflight"]):  # the setup, in this process; the run that is killed has its own
        assert main([*args, "--root", str(root)]) == 0
    straight_root = tmp_path / "straight"
    shutil.copytree(root, straight_root)
    assert main(["train", "--no-progress", "--root", str(straight_root)]) == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "geno_pipeline", "train", "--no-progress", "--root", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = root / "artifacts" / "train" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.is_file() and metrics.read_bytes().count(b"\n") >= 60:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while processes_of(root) and time.time() < deadline:
        time.sleep(0.05)
    assert processes_of(root) == []  # its checkpoint writer process did not outlive it
    killed_at = metrics.read_bytes().count(b"\n")
    assert 60 <= killed_at < 400, "the run should be killed mid-way"
    resumed = cli(root, "train", "--no-progress", "--resume", "auto")
    assert "resumed from" in resumed.stderr
    assert tree(root / "artifacts" / "train") == tree(straight_root / "artifacts" / "train")


def _resume_fails(root: Path, needle: str) -> None:
    """`train --resume auto` (the command line's `main`, in this process) exits 5 naming `needle`, and overwrites nothing."""
    before = tree(root / "artifacts" / "train")
    proc = run_main("train", "--no-progress", "--resume", "auto", "--root", str(root))
    assert proc.returncode == 5, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert tree(root / "artifacts" / "train") == before  # nothing overwritten


@pytest.fixture(scope="module")
def stopped_once(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared project trained to step 6 and stopped there (its checkpoint is step-000006)."""
    from geno_pipeline.cli import main

    root = clone(prepared, tmp_path_factory.mktemp("stopped") / "p")
    assert main(["train", "--no-progress", "--stop-after-step", "6", "--root", str(root)]) == 0
    return root


@pytest.fixture()
def stopped(stopped_once: Path, tmp_path: Path) -> Path:
    """A copy of `stopped_once` of the test's own, to tamper with."""
    return Path(shutil.copytree(stopped_once, tmp_path / "p"))


def test_train_tamper_flipped_tensor_byte(stopped: Path) -> None:
    target = stopped / "artifacts" / "train" / "checkpoints" / "step-000006" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x01
    target.write_bytes(bytes(data))
    _resume_fails(stopped, "model.safetensors: sha256 mismatch")


@pytest.mark.slow
def test_train_tamper_edited_state(stopped: Path) -> None:
    target = stopped / "artifacts" / "train" / "checkpoints" / "step-000006" / "state.json"
    target.write_text(target.read_text().replace('"step": 6', '"step": 7'))
    _resume_fails(stopped, "state.json: sha256 mismatch")


def test_train_tamper_changed_params(stopped: Path) -> None:
    write_params(stopped, train={"lr": 0.004})
    _resume_fails(stopped, "params train.lr: checkpoint has")


@pytest.mark.slow
def test_train_tamper_changed_dataset(stopped: Path) -> None:
    write_params(stopped, data={"seed": 4})
    cli(stopped, "data")
    _resume_fails(stopped, "dataset_manifest_sha256: checkpoint has")


def test_train_nonfinite_guard_keeps_last_checkpoint(prepared: Path, tmp_path: Path) -> None:
    root = clone(prepared, tmp_path / "nan")
    params = load_params(root / "params.yaml")
    micro = params.train.micro_batches  # the predictor runs once per rollout step per micro-batch

    class NaNAfter(torch.nn.Module):
        """Wraps the real predictor and returns NaN from the 6th training forward on."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
            if self.training:
                self.calls += 1
            out = self.inner(state, action)
            return out * float("nan") if self.training and self.calls > 5 * 3 * micro else out

    def factory(tp, length, seeds):
        model = build_world_model(window_length=length, params=tp.model, encoder_seed=seeds.encoder, init_seed=seeds.model_init)
        model.predictor = NaNAfter(model.predictor)
        return model

    params = params.model_copy(update={"train": params.train.model_copy(update={"rollout_step_mix": {3: 1.0}})})
    report = run_training(params, Layout.for_root(root), model_factory=factory)
    assert report.status == "failed_nonfinite"
    assert report.steps_completed == 5 and "non-finite loss at step 6" in report.message
    checkpoints = sorted(p.name for p in (root / "artifacts" / "train" / "checkpoints").iterdir())
    assert checkpoints == ["step-000004"]  # the last good checkpoint stays
    assert not (root / "artifacts" / "train" / "model.safetensors").exists()


def test_train_default_profile_fires_no_collapse_alert(prepared: Path) -> None:
    report = json.loads((prepared / "reports" / "train.json").read_text())
    assert report["collapse"]["alert_count"] == 0
    lines = (prepared / "artifacts" / "train" / "collapse.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 4, 8, 12]


@pytest.mark.slow
def test_train_real_collapse_fires_alerts_and_halts(prepared: Path, tmp_path: Path) -> None:
    root = clone(prepared, tmp_path / "collapse")
    # a non-residual predictor under huge weight decay is driven to its (undecayed) biases: a constant
    collapsing = {"weight_decay": 400.0, "model": {**load_params(root / "params.yaml").train.model.model_dump(), "residual": False}}
    write_params(root, train=collapsing)
    for args in (["preflight"], ["train", "--no-progress"]):  # in this process: the subject is what train does
        assert run_main(*args, "--root", str(root)).returncode == 0
    alerts = {
        a["criterion"] for x in (root / "artifacts" / "train" / "collapse.jsonl").read_text().splitlines() for a in json.loads(x)["alerts"]
    }
    assert {"pred_var_per_dim", "pairwise_pred_dist_mean"} <= alerts
    assert "COLLAPSE ALERT pred_var_per_dim" in (root / "artifacts" / "train" / "train.log").read_text()

    write_params(root, train=collapsing, collapse={"on_alert": "halt"})
    assert run_main("preflight", "--root", str(root)).returncode == 0
    proc = run_main("train", "--no-progress", "--root", str(root))
    assert proc.returncode == 4 and "collapse alert at step 4" in proc.stderr
    report = json.loads((root / "reports" / "train.json").read_text())
    assert report["status"] == "collapsed" and report["steps_completed"] == 4
    assert (root / "artifacts" / "train" / "checkpoints" / "step-000004" / "state.json").is_file()


@pytest.mark.slow
def test_train_checkpoint_loader_never_unpickles(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming loads a checkpoint without any unpickling, and a pickle put in place of a tensor file is refused.

    Unpickling is forbidden while the checkpoint is loaded (and verified); the run around it may use pickle for its own
    hand-over to the checkpoint writer process, which never reads a file."""
    import pickle

    from geno_pipeline.training import resume

    root = clone(prepared, tmp_path / "p")
    cli(root, "train", "--no-progress", "--stop-after-step", "6")

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a checkpoint load unpickled something")

    real_load, loaded = resume.load_checkpoint, []

    def guarded(path: Path, **kwargs: Any) -> Any:
        with monkeypatch.context() as patch:
            patch.setattr(pickle, "load", forbidden)
            patch.setattr(pickle, "loads", forbidden)
            patch.setattr(torch, "load", forbidden)
            loaded.append(Path(path).name)
            return real_load(path, **kwargs)

    monkeypatch.setattr(resume, "load_checkpoint", guarded)
    other = tmp_path / "q"
    shutil.copytree(root, other)  # with its checkpoints
    report = run_training(load_params(other / "params.yaml"), Layout.for_root(other), resume="auto")
    assert report.status == "completed" and loaded == ["step-000006"]
    target = root / "artifacts" / "train" / "checkpoints" / "step-000006" / "model.safetensors"
    target.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))  # what torch.save would put there, minus the zip
    _resume_fails(root, "model.safetensors")


def test_train_requires_preflight_fingerprint(tmp_path: Path) -> None:
    write_params(tmp_path)
    cli(tmp_path, "data")
    proc = cli(tmp_path, "train", "--no-progress", check=False)
    assert proc.returncode == 2 and "run `geno-pipeline preflight` first" in proc.stderr


def test_train_checkpoint_error_type_is_public() -> None:
    from geno_pipeline.training import TrainingCheckpointError as Public

    assert Public is TrainingCheckpointError


def test_train_every_written_log_line_validates(prepared: Path) -> None:
    """Metrics lines are schema-checked once per run when written; every line on disk must still validate."""
    from geno_pipeline.jsonio import validate_document

    for name, schema in (("metrics.jsonl", "metrics_line"), ("collapse.jsonl", "collapse_line")):
        lines = (prepared / "artifacts" / "train" / name).read_text().splitlines()
        assert lines
        for number, text in enumerate(lines, 1):
            validate_document(json.loads(text), schema, source=f"{name}:{number}")
    assert len((prepared / "artifacts" / "train" / "metrics.jsonl").read_text().splitlines()) == 12


def test_train_checkpoints_record_only_synced_log_bytes(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Log lines are appended without a sync of their own; each checkpoint syncs every log at (at least: it is written
    in the background while training appends more) the length it records, before any of its own files is synced, so a
    checkpoint on disk never names log bytes a crash could take back; the finished run syncs the logs once more."""
    from geno_pipeline.layout import LOG_FILES

    other = clone(prepared, tmp_path / "other")
    journal = tmp_path / "fsyncs.txt"  # (pid, path, size) at each fsync, in order, from the stage and its writer process
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        with open(journal, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\t{os.readlink(f'/proc/self/fd/{fd}')}\t{os.fstat(fd).st_size}\n")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run_training(load_params(other / "params.yaml"), Layout.for_root(other))
    rows = [line.split("\t") for line in journal.read_text().splitlines()]
    events = [(path, int(size)) for _, path, size in rows]
    if process_writer_available():  # the checkpoints' own syncs (and the log syncs they record) ran in the writer process
        writers = {pid for pid, path, _ in rows if ".step-" in path}
        assert len(writers) == 1 and str(os.getpid()) not in writers, writers
    train = other / "artifacts" / "train"
    logs = {name: str((train / name).resolve()) for name in LOG_FILES}
    checkpoints = sorted((train / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-000008", "step-000012"]  # keep_checkpoints: 2
    for checkpoint in checkpoints:
        recorded = json.loads((checkpoint / "state.json").read_text())["logs"]
        first_own = next(i for i, (path, _) in enumerate(events) if f"/.{checkpoint.name}.tmp-" in path)
        for name, path in logs.items():
            synced = [size for p, size in events[:first_own] if p == path]
            assert synced and synced[-1] >= recorded[name]["bytes"], (checkpoint.name, name, synced[-1:], recorded[name])
    for name, path in logs.items():
        assert [size for p, size in events if p == path][-1] == (train / name).stat().st_size, name  # the finished run's logs
    assert tree(train) == tree(prepared / "artifacts" / "train")  # the same bytes as the CLI's run


@pytest.mark.parametrize("prefetch", [True, False])
def test_train_prefetch_changes_no_byte_straight_or_resumed(prepared: Path, tmp_path: Path, prefetch: bool) -> None:
    """Preparing the batches ahead on a worker thread, or not, writes the CLI run's train tree byte for byte; so does a
    resume from the checkpoint of step 8, which was written while the prefetch thread had already drawn steps 9 and 10
    (the checkpoint records the sampler as it was after step 8's draw, not the live sampler)."""
    from geno_pipeline.training import stage

    straight = tree(prepared / "artifacts" / "train")
    other = clone(prepared, tmp_path / "other")
    params, layout = load_params(other / "params.yaml"), Layout.for_root(other)
    result = stage.run(params, layout, prefetch=prefetch)
    assert result.facts["prefetch"] is prefetch and result.facts["input_wait_ms_per_step"] is not None
    assert tree(layout.train_dir) == straight
    checkpoint = layout.checkpoints / "step-000008"
    shutil.rmtree(layout.checkpoints / "step-000012")
    resumed = stage.run(params, layout, resume=checkpoint, prefetch=prefetch)
    assert resumed.facts["resumed_from_step"] == 8 and resumed.facts["steps_run"] == 4
    assert tree(layout.train_dir) == straight


def test_train_a_sigterm_while_the_prefetch_thread_starts_still_stops_it(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SIGTERM lands while the prefetch thread is being started: the run ends with 143 and no prefetch thread
    is left running. One left in a torch kernel when the interpreter exits aborts the process ("terminate called
    without an active exception", exit -6), as the fault campaign saw."""
    import threading

    from geno_pipeline import workspace
    from geno_pipeline.training import stage

    real_start = threading.Thread.start

    def start_then_sigterm(self: threading.Thread) -> None:
        real_start(self)
        if self.name == "geno-pipeline-prefetch":
            raise workspace.Terminated()  # as the handler raises it when the signal lands in `start`'s wait

    monkeypatch.setattr(threading.Thread, "start", start_then_sigterm)
    monkeypatch.setattr(stage, "prefetch_default", lambda *_args: True)
    root = clone(prepared, tmp_path / "p")
    proc = run_main("train", "--no-progress", "--root", str(root))
    assert proc.returncode == 143 and proc.stderr.strip().endswith("terminated (SIGTERM); nothing was half-written")
    assert [t for t in threading.enumerate() if t.name == "geno-pipeline-prefetch"] == []


def test_prefetch_close_waits_for_the_worker_through_a_second_interrupt() -> None:
    """A second Ctrl-C while `close` waits for the worker is raised once the worker has ended; a worker never started
    is closed without waiting."""
    import threading

    from geno_pipeline.training.prefetch import PrefetchInput, Prepared

    release = threading.Event()

    def prepare(step: int) -> Prepared:
        release.wait(10)
        return Prepared(step, [], 0, {}, 0.0, 0.0)

    PrefetchInput(prepare, 1, 3).close()  # never started
    source = PrefetchInput(prepare, 1, 3).start()
    real_join, joins = source._thread.join, []

    def join(timeout: float | None = None) -> None:
        joins.append(timeout)
        if len(joins) == 1:
            release.set()
            raise KeyboardInterrupt
        real_join(timeout)

    source._thread.join = join  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        source.close()
    assert len(joins) == 2 and not source._thread.is_alive()


def test_train_writes_the_same_bytes_with_either_checkpoint_writer(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the checkpoints are written changes nothing on disk: a run whose checkpoints are written on a thread (the
    fallback off Linux) gives the same train tree as the CLI's run (a writer process on Linux), and each says which
    writer ran in its runtime facts."""
    import functools

    from geno_pipeline.training import run as training_run
    from geno_pipeline.training import stage

    cli_facts = json.loads(Layout.for_root(prepared).runtime_report("train").read_text())["facts"]
    assert cli_facts["checkpoint_writer"] == ("ProcessWriter" if process_writer_available() else "ThreadWriter")
    other = clone(prepared, tmp_path / "other")
    monkeypatch.setattr(training_run, "start_writer", functools.partial(training_run.start_writer, process=False))
    result = stage.run(load_params(other / "params.yaml"), Layout.for_root(other))
    assert result.facts["checkpoint_writer"] == "ThreadWriter" and float(result.facts["checkpoint_writer_seconds"]) > 0  # type: ignore[arg-type]
    assert tree(other / "artifacts" / "train") == tree(prepared / "artifacts" / "train")


def _open_files() -> list[str]:
    """What this process's file descriptors point at (Linux)."""
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the descriptor listing the directory itself, closed by now
            out.append(os.readlink(fd))
    return sorted(out)


@pytest.mark.skipif(not process_writer_available(), reason="the writer process exists on Linux only")
def test_train_falls_back_to_a_thread_when_the_fork_is_refused(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the system refuses the writer process (fork: EAGAIN at the process limit), the stage says so on stderr and
    writes its checkpoints on a thread: the same train tree as the CLI's run, and no pipe or log left open after it."""
    from geno_pipeline.training import background, stage

    other = clone(prepared, tmp_path / "other")
    params = load_params(other / "params.yaml")

    def refused() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(background.os, "fork", refused)
    before = _open_files()
    result = stage.run(params, Layout.for_root(other))
    assert _open_files() == before
    assert result.facts["checkpoint_writer"] == "ThreadWriter"
    assert "could not start the checkpoint writer process ([Errno 11] Resource temporarily unavailable)" in capsys.readouterr().err
    assert tree(other / "artifacts" / "train") == tree(prepared / "artifacts" / "train")


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
@settings(max_examples=10, deadline=None)
@given(fails=st.lists(st.booleans(), min_size=1, max_size=8))
def test_writer_runs_jobs_in_order_and_hands_back_their_errors(
    process: bool, fails: list[bool], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Jobs run one at a time in submission order, away from the calling thread (in another process for the process
    writer); a job's error is raised by the next `submit` (which then does not queue its job) or by `close`, as the same
    error; `abandon` waits for the job in flight and drops its error; nothing is left running."""
    import threading

    from geno_pipeline.training.background import ProcessWriter, ThreadWriter, Writer

    journal = tmp_path_factory.mktemp("writer") / "ran.txt"

    def handler(index: int) -> None:
        time.sleep(0.001)
        with open(journal, "a", encoding="utf-8") as handle:
            handle.write(f"{index} {os.getpid()} {threading.get_ident()}\n")
        if fails[index]:
            raise OSError(errno.ENOSPC, f"job {index}")

    def start() -> Writer[int]:
        return ProcessWriter(handler, "test") if process else ThreadWriter(handler, "test")

    writer, raised = start(), []
    for index in range(len(fails)):
        try:
            writer.submit(index)
        except OSError as exc:
            raised.append((exc.errno, exc.strerror))
            writer.submit(index)  # the caller goes on: the failed job is handed back once
    try:
        writer.close()
    except OSError as exc:
        raised.append((exc.errno, exc.strerror))
    rows = [line.split() for line in journal.read_text().splitlines()]
    assert [int(r[0]) for r in rows] == list(range(len(fails)))
    assert raised == [(errno.ENOSPC, f"job {i}") for i, bad in enumerate(fails) if bad]
    if process:
        assert {r[1] for r in rows} == {str(writer.pid)} != {str(os.getpid())}  # type: ignore[attr-defined]
        assert not process_alive(writer.pid)  # type: ignore[attr-defined]
    else:
        assert {r[1] for r in rows} == {str(os.getpid())} and str(threading.get_ident()) not in {r[2] for r in rows}
    assert writer.busy_seconds >= 0.001 * len(fails)  # each job sleeps 1 ms, failed ones included
    late = start()
    late.submit(fails.index(True) if any(fails) else 0)
    late.abandon()  # no error, even when the job failed


def test_process_writer_hands_over_a_payload_larger_than_its_pipe(tmp_path: Path) -> None:
    """A payload of several MiB (more than the pipe holds, so written and read in parts) arrives whole."""
    from geno_pipeline.training.background import ProcessWriter

    out, data = tmp_path / "got.bin", os.urandom(3 << 20)
    writer: ProcessWriter[bytes] = ProcessWriter(out.write_bytes, "test")
    writer.submit(data)
    writer.close()
    assert out.read_bytes() == data and not process_alive(writer.pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_process_writer_dies_with_its_parent_even_in_the_middle_of_a_job() -> None:
    """SIGKILL of the stage process kills its writer at once, also while a job runs (which would otherwise go on
    writing into a project that a resumed run may already be using)."""
    script = (
        "import os, sys, time\n"
        "from geno_pipeline.training.background import ProcessWriter\n"
        "writer = ProcessWriter(time.sleep, 'test')\n"
        "writer.submit(120)\n"
        "print(writer.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert process_alive(child)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not process_alive(child)


def test_process_writer_names_a_child_that_died_and_an_unpicklable_error() -> None:
    """A writer process killed mid-job (out of memory, say) is one clear `TrainingError`; an error the child cannot send
    back as itself comes back as a `RuntimeError` naming it, with the child's traceback."""
    from geno_pipeline.errors import TrainingError
    from geno_pipeline.training.background import ProcessWriter

    def die(_: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    writer: ProcessWriter[int] = ProcessWriter(die, "test")
    writer.submit(1)
    with pytest.raises(TrainingError, match=rf"test writer process \(pid {writer.pid}\) died .*killed by signal 9.*--resume auto") as died:
        writer.wait()
    assert died.value.exit_code == 4  # training stopped early, not exit 2's "invalid input"
    assert not process_alive(writer.pid)

    class Odd(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"odd {a} {b}")

    def odd(_: object) -> None:
        raise Odd(1, 2)

    second: ProcessWriter[int] = ProcessWriter(odd, "test")
    second.submit(1)
    with pytest.raises(RuntimeError, match="Odd: odd 1 2") as info:
        second.close()
    assert "in the test writer process" in "".join(getattr(info.value, "__notes__", []))
    assert not process_alive(second.pid)


def test_train_encoding_part_counts_the_source_cache_and_not_the_held_out_batch(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's encoding part starts from the time the source cache took; building the held-out batch (setup, in
    the same constructor call) must not be counted in it. A fake clock makes the figures exact."""
    from types import SimpleNamespace

    from geno_pipeline.training import stage

    now = [0.0]
    monkeypatch.setattr(stage, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def timed(advance: float, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            now[0] += advance
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(stage, "source_states", timed(7.0, stage.source_states))
    monkeypatch.setattr(stage, "build_held_out", timed(100.0, stage.build_held_out))
    other = clone(prepared, tmp_path / "other")
    params = stage.TrainStageParams.from_params(load_params(other / "params.yaml"))
    run = stage.setup(params, Layout.for_root(other), expected_fingerprint=None, model_factory=None)
    assert run.source_states is not None and run.source_seconds == 7.0


def test_train_runtime_facts_break_the_loop_time_into_parts(prepared: Path) -> None:
    from geno_pipeline.training.stage import PARTS

    facts = json.loads((prepared / "reports" / "runtime" / "train.json").read_text())["facts"]
    for part in PARTS:
        assert facts[f"loop_{part}_seconds"] >= 0
    assert facts["loop_step_seconds"] == facts["train_step_seconds"]


@given(st.lists(st.tuples(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=3)), min_size=1, max_size=12))
def test_padded_target_rows_reuse_each_examples_last_real_window(shape: list[tuple[int, int]]) -> None:
    from geno_pipeline.training.heldout import padded_target_rows

    k_max = max(k for k, _ in shape)
    steps = np.array([k for k, _ in shape])
    mask = np.arange(k_max)[None, :] < steps[:, None]
    real, gather = padded_target_rows(mask)
    assert real.tolist() == [b * k_max + k for b in range(len(shape)) for k in range(int(steps[b]))]
    chosen = real[gather].reshape(len(shape), k_max)
    for b in range(len(shape)):
        for k in range(k_max):
            assert chosen[b, k] == b * k_max + min(k, int(steps[b]) - 1)


def test_encode_batch_encodes_the_real_targets_and_repeats_the_last_for_padding(prepared: Path) -> None:
    """The training path encodes only the real target windows, in one call, and fills each padded step with its example's
    last real encoding: bit for bit. Against the held-out path (the whole padded [B, K_max] block in one call) it agrees
    to fp32 rounding only: the BLAS may round a product of a few rows differently from one of many (MKL's small-M sgemm
    on AVX-512 CPUs does), which is why the CPU class is part of the environment fingerprint."""
    from geno_pipeline.data.dataset import load_dataset
    from geno_pipeline.training.heldout import encode_batch
    from geno_pipeline.training.sampling import DEFAULT_EDIT_TYPE_WEIGHTS, rollout_mix_from_mapping
    from geno_pipeline.training.tuples import TupleSampler

    params = load_params(prepared / "params.yaml")
    dataset = load_dataset(prepared / "artifacts" / "dataset")
    model = build_world_model(window_length=64, params=params.train.model, encoder_seed=1, init_seed=2)
    mix = rollout_mix_from_mapping({1: 0.5, 2: 0.25, 3: 0.25})
    sampler = TupleSampler(9, window_length=64, weights=DEFAULT_EDIT_TYPE_WEIGHTS, mix=mix)
    for size in (2, 8, 33):
        batch = sampler.draw(dataset.train, size)
        encoded = encode_batch(model, batch, "cpu")
        b, k, length = batch.targets.shape
        flat = batch.targets.reshape(b * k, length)
        real = model.encoder.encode(torch.from_numpy(flat[batch.mask.reshape(-1)]))
        steps = batch.mask.sum(axis=1)
        row = 0
        for i in range(b):
            for j in range(k):
                assert torch.equal(encoded.target[i, j], real[row + min(j, int(steps[i]) - 1)]), (size, i, j)
            row += int(steps[i])
        assert row == real.shape[0]
        full = model.encoder.encode(torch.from_numpy(flat)).reshape(b, k, -1)
        assert torch.allclose(encoded.target, full, rtol=0, atol=1e-5)
        assert not torch.allclose(encoded.target, torch.roll(full, 1, dims=0), rtol=0, atol=1e-5)
        assert torch.equal(encoded.state, model.encoder.encode(torch.from_numpy(batch.sources)))


@given(windows=st.integers(0, 10**7), draws=st.integers(0, 10**8), state_dim=st.integers(1, 4096))
def test_source_states_are_cached_exactly_when_that_is_less_encoder_work_and_fits(windows: int, draws: int, state_dim: int) -> None:
    from geno_pipeline.training.heldout import SOURCE_CACHE_MAX_BYTES, caches_source_states

    cached = caches_source_states(windows, draws, state_dim)
    assert cached == (0 < windows <= draws and windows * state_dim * 4 <= SOURCE_CACHE_MAX_BYTES)
    if cached:  # more draws never turn it off; fewer windows never turn it off
        assert caches_source_states(windows, draws + 1, state_dim) and caches_source_states(max(windows - 1, 1), draws, state_dim)


def test_cached_source_states_are_looked_up_by_row(prepared: Path) -> None:
    """With the windows encoded once (fixed chunks), each drawn source's state is its row of them, whatever batch drew
    it; against encoding the batch's sources it agrees to fp32 rounding (the BLAS may round a chunk of 64 rows
    differently from a batch of 8), which is why the choice is fixed by the params and the dataset."""
    from geno_pipeline.data.dataset import load_dataset
    from geno_pipeline.training.heldout import SOURCE_CACHE_CHUNK, encode_batch, encode_windows
    from geno_pipeline.training.sampling import DEFAULT_EDIT_TYPE_WEIGHTS, rollout_mix_from_mapping
    from geno_pipeline.training.tuples import TupleSampler, take_rows

    params = load_params(prepared / "params.yaml")
    dataset = load_dataset(prepared / "artifacts" / "dataset")
    model = build_world_model(window_length=64, params=params.train.model, encoder_seed=1, init_seed=2)
    windows = np.concatenate([dataset.train] * 3)  # more than one chunk, the last one partial
    assert windows.shape[0] > SOURCE_CACHE_CHUNK and windows.shape[0] % SOURCE_CACHE_CHUNK
    states = encode_windows(model, windows, 64, "cpu")
    assert states.shape == (windows.shape[0], params.train.model.state_dim)
    assert torch.equal(states[:SOURCE_CACHE_CHUNK], model.encoder.encode(torch.from_numpy(windows[:SOURCE_CACHE_CHUNK, :64].copy())))
    mix = rollout_mix_from_mapping({1: 0.5, 2: 0.25, 3: 0.25})
    sampler = TupleSampler(9, window_length=64, weights=DEFAULT_EDIT_TYPE_WEIGHTS, mix=mix)
    for size in (1, 8, 33):
        batch = sampler.draw(windows, size)
        assert np.array_equal(batch.sources, windows[batch.rows, :64])
        half = take_rows(batch, slice(size // 2, size))
        assert np.array_equal(half.rows, batch.rows[size // 2 :])
        for part in (batch, half):
            cached, plain = encode_batch(model, part, "cpu", source_states=states), encode_batch(model, part, "cpu")
            assert torch.equal(cached.state, states[torch.from_numpy(part.rows)])
            assert torch.equal(cached.target, plain.target)  # only the sources come from the cache
            assert torch.allclose(cached.state, plain.state, rtol=0, atol=1e-5)
            marked = encode_batch(model, part, "cpu", source_states=states + 1.0)  # the states given are the ones used
            assert torch.equal(marked.state, states[torch.from_numpy(part.rows)] + 1.0)


@pytest.mark.slow
def test_train_without_the_source_cache_resumes_identically(tmp_path: Path) -> None:
    """More training windows than the run draws (steps x batch): sources are encoded per step instead, and a run stopped
    and resumed in a new process still writes the straight run's bytes."""
    from geno_pipeline.data.dataset import load_dataset
    from geno_pipeline.training.stage import TrainStageParams, setup, source_states

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    write_params(straight, data={"train_windows": 300}, train={"steps": 8})
    shutil.copy(Path(__file__).resolve().parent.parent / "pyproject.toml", straight / "pyproject.toml")
    for args in (["data"], ["preflight"]):  # the setup, in this process
        assert run_main(*args, "--root", str(straight)).returncode == 0
    shutil.copytree(straight, resumed)
    params = load_params(straight / "params.yaml")
    run = setup(TrainStageParams.from_params(params), Layout.for_root(straight), expected_fingerprint=None, model_factory=None)
    assert run.source_states is None and load_dataset(straight / "artifacts" / "dataset").train.shape[0] == 300
    assert source_states(run.model, run.dataset, params.train.model_copy(update={"steps": 300}), "cpu") is not None
    assert run_main("train", "--no-progress", "--root", str(straight)).returncode == 0
    assert run_main("train", "--no-progress", "--stop-after-step", "3", "--root", str(resumed)).returncode == 0
    cli(resumed, "train", "--no-progress", "--resume", "auto")  # resumed in a new process
    assert tree(resumed / "artifacts" / "train") == tree(straight / "artifacts" / "train")
    for report in ("train.json", "metrics.json"):
        assert (resumed / "reports" / report).read_bytes() == (straight / "reports" / report).read_bytes()


@pytest.mark.slow
def test_train_resume_refuses_another_package_version(stopped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geno_pipeline.training.stage as train_stage

    monkeypatch.setattr(train_stage, "__version__", "99.0.0")
    with pytest.raises(TrainingCheckpointError, match="package_version"):
        run_training(load_params(stopped / "params.yaml"), Layout.for_root(stopped), resume="auto")


@pytest.mark.slow
def test_train_resume_refuses_another_environment(stopped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geno_pipeline.training.stage as train_stage

    real = train_stage.build_fingerprint
    monkeypatch.setattr(train_stage, "build_fingerprint", lambda *a, **k: real(*a, **k).model_copy(update={"cpu_threads": 7}))
    with pytest.raises(TrainingCheckpointError, match="environment_sha256"):
        run_training(load_params(stopped / "params.yaml"), Layout.for_root(stopped), resume="auto")


PINNED = Path(__file__).resolve().parent / "pinned_tiny_numerics.json"


def test_train_pinned_numeric_regression(prepared: Path) -> None:
    """Same code, different math: the tiny profile's per-step numbers and final held-out ratio, pinned.

    When this fails after an intended change of the training math, re-pin deliberately: run the tiny profile
    (tests/params_tiny.yaml: data, then `run_training`), write its metrics.jsonl steps and the report's held-out
    figures into tests/pinned_tiny_numerics.json, and say in the commit why the numbers moved."""
    pinned = json.loads(PINNED.read_text())
    lines = [json.loads(line) for line in (prepared / "artifacts" / "train" / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((prepared / "reports" / "train.json").read_text())
    fix = f"the training math changed; if that was intended, re-pin {PINNED.name} as this test's docstring says"
    assert len(lines) == len(pinned["steps"]), fix
    for got, want in zip(lines, pinned["steps"], strict=True):
        for key in ("loss", "pred_loss", "kl_reg", "grad_norm", "lr_multiplier"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9), f"step {want['step']} {key}: {fix}"
    for key in ("final_heldout_loss", "identity_baseline_heldout_loss", "heldout_to_baseline"):
        assert report[key] == pytest.approx(pinned[key], rel=1e-5), f"{key}: {fix}"


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [True, False])
def test_train_fingerprint_records_tf32_as_torch_reports_it(tmp_path: Path, deterministic: bool) -> None:
    """TF32 in preflight's and train's fingerprints is what torch reports after the settings: off when deterministic,
    on otherwise; the two agree, so a non-deterministic run is not refused."""
    write_params(tmp_path, runtime={"deterministic": deterministic}, train={"steps": 4})
    shutil.copy(Path(__file__).resolve().parent.parent / "pyproject.toml", tmp_path / "pyproject.toml")
    cli(tmp_path, "data")
    cli(tmp_path, "preflight", check=False)  # deterministic off is a warning, not a failure
    layout = Layout.for_root(tmp_path)
    assert json.loads(layout.environment.read_text())["tf32"] is (not deterministic)
    cli(tmp_path, "train", "--no-progress")
    report = json.loads(layout.train_report.read_text())
    assert report["environment"]["tf32"] is (not deterministic)
    assert report["determinism"]["tf32_matmul"] is (not deterministic)
    from geno_pipeline.torchflags import cpu_kernel_class

    here = cpu_kernel_class()  # the CPU class torch dispatches to in this process: the same in preflight's probe and train
    assert json.loads(layout.environment.read_text())["cpu_class"] == report["environment"]["cpu_class"] == here
    assert report["determinism"]["cpu_class"] == here


_LOG_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from(["metrics.jsonl", "collapse.jsonl", "train.log"]), st.text(max_size=40)),
        st.tuples(st.just("record"), st.integers(0, 3), st.just("")),  # 0: now; k > 0: the k-th record back's lengths
        st.tuples(st.just("truncate"), st.integers(1, 3), st.just("")),
        st.tuples(st.just("reset"), st.just(0), st.just("")),
        st.tuples(st.just("close"), st.just(0), st.just("")),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(ops=_LOG_OPS)
@example(ops=[("append", "train.log", "a"), ("record", 0, ""), ("append", "train.log", "b"), ("record", 0, ""), ("record", 2, "")])
@example(ops=[("append", "train.log", "a"), ("record", 0, ""), ("reset", 0, ""), ("append", "train.log", "b"), ("record", 0, "")])
@example(
    ops=[("append", "train.log", "a"), ("record", 0, ""), ("append", "train.log", "b"), ("record", 0, ""), ("truncate", 2, ""),
         ("append", "train.log", "c"), ("record", 0, "")]
)  # fmt: skip
@example(
    ops=[("record", 0, ""), ("append", "metrics.jsonl", ""), ("record", 0, ""), ("record", 2, ""), ("record", 0, ""),
         ("truncate", 2, ""), ("truncate", 2, "")]
)  # fmt: skip
def test_log_records_hash_only_new_bytes_and_equal_a_fresh_hash_of_the_prefix(ops: list[tuple[str, Any, str]]) -> None:
    """`RunLogs.record` keeps a running hash and reads only the bytes appended since the last record; whatever the order of
    appends, records (at the lengths now or at an earlier checkpoint's), truncations to a record, resets and closes, each
    record is the length and SHA-256 of the log's first bytes, as hashing that prefix afresh gives. train.log lines go
    through `RunLogs.log` (its append handle, kept open across records and reopened after a reset, truncation or close),
    the other logs' from outside; each log ends holding exactly the lines appended since its last cut, in order."""
    import tempfile

    from geno_pipeline.training.logs import RunLogs

    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout.for_root(Path(tmp))
        layout.log("train.log").parent.mkdir(parents=True)
        logs = RunLogs(layout)
        logs.reset()
        history: list[tuple[dict[str, int], dict[str, Any]]] = []
        expected = dict.fromkeys(logs.paths, b"")
        for op, arg, text in ops:
            text = text.replace("\n", " ").replace("\r", " ")
            if op == "append":
                expected[arg] += (text + "\n").encode()
            if op == "append" and arg == "train.log":
                logs.log(text)
            elif op == "append":
                with open(logs.paths[arg], "a", encoding="utf-8", newline="") as handle:
                    handle.write(text + "\n")
            elif op == "close":
                logs.close()
            elif op == "record":
                lengths = logs.lengths() if arg == 0 or arg > len(history) else history[-arg][0]
                records = logs.record(lengths)
                for name, path in logs.paths.items():
                    prefix = path.read_bytes()[: lengths[name]]
                    assert (records[name].bytes, records[name].sha256) == (len(prefix), hashlib.sha256(prefix).hexdigest())
                history.append((lengths, records))
            elif op == "truncate" and arg <= len(history):
                kept = history[-arg][0]
                logs.truncate_to(history[-arg][1])
                # The checkpoints after it are gone; so is any earlier record longer than the cut logs (one made at a
                # later checkpoint's lengths, then recorded back): neither is a prefix of what remains.
                history = [h for h in history[: len(history) - arg + 1] if all(h[0][n] <= kept[n] for n in kept)]
                expected = {n: data[: kept[n]] for n, data in expected.items()}
            elif op == "reset":
                logs.reset()
                history.clear()
                expected = dict.fromkeys(logs.paths, b"")
        logs.close()
        assert {n: p.read_bytes() for n, p in logs.paths.items()} == expected


def _purposes(root: Path, **overrides: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Any], list[Any]]:
    """(initial weights, the held-out batch, the sampler's first two draws) of the train stage's setup on `root`'s
    dataset, with the params sections overridden."""
    from geno_pipeline.training.stage import TrainStageParams, setup

    write_params(root, **overrides)
    params = TrainStageParams.from_params(load_params(root / "params.yaml"))
    run = setup(params, Layout.for_root(root), expected_fingerprint=None, model_factory=None)
    assert run.held is not None
    held = [run.held.state, run.held.target, run.held.actions, run.held.mask, run.held.last_index, run.held.identity_loss]
    draws = [run.sampler.draw(run.dataset.train, 8) for _ in range(2)]
    sampled = [getattr(d, f) for d in draws for f in ("sources", "targets", "actions", "mask", "rollout_steps", "rows", "rel_edits")]
    return {k: v.clone() for k, v in run.model.state_dict().items()}, held, sampled


def _same(a: list[Any], b: list[Any]) -> bool:
    def equal(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return x.dtype == y.dtype and x.shape == y.shape and bool(torch.equal(x, y))
        if isinstance(x, np.ndarray):
            return x.dtype == y.dtype and x.shape == y.shape and bool((x == y).all())
        return bool(x == y)

    return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))


def test_train_setup_each_purpose_has_its_own_seed(tiny_dataset: Path) -> None:
    """What the per-purpose seeds are for: the initial weights, the held-out batch and the sampler's draws each depend
    only on their own inputs. Another held-out batch size leaves the weights and the sampler's draws as they were;
    another batch size leaves the weights and the held-out batch; another learning rate leaves all three; another
    train.seed moves all three."""
    weights, held, sampled = _purposes(tiny_dataset)
    w_valid, h_valid, s_valid = _purposes(tiny_dataset, collapse={"valid_batch_size": 16})
    w_batch, h_batch, _ = _purposes(tiny_dataset, train={"batch_size": 16})
    w_lr, h_lr, s_lr = _purposes(tiny_dataset, train={"lr": 0.01})
    w_seed, h_seed, s_seed = _purposes(tiny_dataset, train={"seed": 6})
    names = sorted(weights)
    assert _same([weights[n] for n in names], [w_valid[n] for n in names]) and _same(sampled, s_valid)
    assert not _same(held, h_valid)  # the held-out batch did change size
    assert _same([weights[n] for n in names], [w_batch[n] for n in names]) and _same(held, h_batch)
    assert _same([weights[n] for n in names], [w_lr[n] for n in names]) and _same(held, h_lr) and _same(sampled, s_lr)
    assert not _same([weights[n] for n in names], [w_seed[n] for n in names])
    assert not _same(held, h_seed) and not _same(sampled, s_seed)

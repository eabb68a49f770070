"""`geno-pipeline` command line: one subcommand per stage plus verify, sign, validate, schemas and repro-check.

argv is parsed only here; each handler reads its own params section and calls the stage's `run`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geno_pipeline.cli_parser import EXIT_CODES, build_parser
from geno_pipeline.distributed.launch import LAUNCHER_PID_ENV
from geno_pipeline.errors import (
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_PREFLIGHT,
    EXIT_TRAINING_STOPPED,
    EXIT_VERIFY,
    GenoPipelineError,
    OutputError,
    shorten,
)
from geno_pipeline.layout import Layout
from geno_pipeline.openmp import apply_wait_policy

if TYPE_CHECKING:  # the CLI imports params, pydantic and numpy only when a stage runs, so --help stays light
    from geno_pipeline.config import LoadedParams
    from geno_pipeline.runtime_report import StageResult

__all__ = ["EXIT_CODES", "build_parser", "entrypoint", "main"]


@dataclass(frozen=True)
class StageCommand:
    """How the CLI runs one pipeline stage: params narrowed to the stage, its run, and what to print."""

    announce: Callable[[LoadedParams], str | None]  # a first line before long work, or None
    run: Callable[[LoadedParams, Layout, argparse.Namespace], StageResult[Any]]
    summary: Callable[[Layout, Any, argparse.Namespace], list[str]]
    status: Callable[[Any], str]  # a key of STATUS_EXIT
    failure: Callable[[Any], str] = lambda _doc: ""  # the stderr line of a non-ok status
    persist: Callable[[LoadedParams, Layout, argparse.Namespace, Any], None] | None = None  # writes after the summary


STATUS_EXIT = {"ok": EXIT_OK, "preflight_not_ok": EXIT_PREFLIGHT, "training_stopped": EXIT_TRAINING_STOPPED}


def _data_command() -> StageCommand:
    from geno_pipeline.data import stage

    def announce(loaded: LoadedParams) -> str:
        d = loaded.require().data
        return f"data: building {d.train_windows} train + {d.valid_windows} valid windows ({d.source}) ..."

    return StageCommand(
        announce=announce,
        run=lambda loaded, layout, _args: stage.run(loaded.require().data, layout),
        summary=lambda layout, manifest, _args: stage.summary(layout, manifest),
        status=lambda _doc: "ok",
    )


def _preflight_command() -> StageCommand:
    from geno_pipeline.preflight import stage

    def persist(loaded: LoadedParams, layout: Layout, args: argparse.Namespace, report: Any) -> None:
        stage.write_outputs(report, loaded, layout, args.output)

    return StageCommand(
        announce=lambda _loaded: None,
        run=lambda loaded, layout, _args: stage.assess(loaded, layout),
        summary=lambda layout, report, args: stage.summary(layout, report, args.output),
        status=lambda report: "ok" if report.ok else "preflight_not_ok",
        failure=lambda _report: "preflight: stopping here; fix the errors above and run again",
        persist=persist,
    )


def _train_command() -> StageCommand:
    from geno_pipeline.config import TrainStageParams
    from geno_pipeline.training import stage

    def run(loaded: LoadedParams, layout: Layout, args: argparse.Namespace) -> StageResult[Any]:
        from geno_pipeline.data.dataset import check_dataset_params
        from geno_pipeline.distributed import job_from_env, resolve_backend
        from geno_pipeline.distributed.group import joined
        from geno_pipeline.environment import torch_training_device

        check_dataset_params(layout.dataset_dir, loaded.require().data)  # the stage reads only its own sections
        params = TrainStageParams.from_params(loaded.require())
        expected = stage.preflight_fingerprint(layout)
        options: dict[str, Any] = {
            "resume": args.resume, "stop_after_step": args.stop_after_step, "progress": not args.no_progress,
            "expected_fingerprint": expected, "prefetch": {"auto": None, "on": True, "off": False}[args.prefetch],
        }  # fmt: skip
        job = job_from_env(os.environ)
        if job is None:
            return stage.run(params, layout, **options)
        runtime = params.runtime
        device, _ = torch_training_device(runtime.device, local_rank=job.local_rank)
        backend = resolve_backend(runtime.dist_backend, device)
        with joined(job, backend=backend, device=device, timeout_s=runtime.dist_timeout_s) as group:
            return stage.run(params, layout, group=group, local_rank=job.local_rank, **options)

    return StageCommand(
        announce=lambda _loaded: None,
        run=run,
        summary=lambda _layout, report, _args: stage.summary(report),
        status=lambda report: "training_stopped" if report.status in ("failed_nonfinite", "collapsed") else "ok",
        failure=lambda report: f"train: error: {report.message}",
    )


def _sweep_command() -> StageCommand:
    from geno_pipeline.sweep import stage

    def run(loaded: LoadedParams, layout: Layout, args: argparse.Namespace) -> StageResult[Any]:
        if args.seeds is not None and args.seeds < 0:
            raise GenoPipelineError(f"--seeds {args.seeds}: must be 0 or more")
        return stage.run(loaded.require(), layout, seeds=args.seeds, progress=not args.no_progress and sys.stderr.isatty())

    return StageCommand(
        announce=lambda _loaded: None,
        run=run,
        summary=lambda layout, report, _args: stage.summary(layout, report),
        status=lambda _doc: "ok",
    )


def _release_command() -> StageCommand:
    from geno_pipeline.release import stage

    return StageCommand(
        announce=lambda _loaded: None,
        run=lambda loaded, layout, _args: stage.run(loaded.require(), layout),
        summary=lambda layout, release, _args: stage.summary(layout, release),
        status=lambda _doc: "ok",
    )


def run_stage(name: str, command: StageCommand, args: argparse.Namespace) -> int:
    """Load params once, run the stage, time it, write its runtime report, print its summary, map its status to an exit code."""
    from geno_pipeline.config import LoadedParams
    from geno_pipeline.runtime_report import utc_now, write_runtime_report

    started, t0 = utc_now(), time.perf_counter()
    layout = Layout.for_root(args.root)
    loaded = LoadedParams.read(args.params if args.params is not None else layout.params)
    first = command.announce(loaded)
    if first:
        print(first, flush=True)
    result = command.run(loaded, layout, args)
    if result.quiet:  # a worker other than rank 0 of a multi-process job: rank 0 prints and writes
        return STATUS_EXIT[command.status(result.document)]
    for line in command.summary(layout, result.document, args):
        print(line, flush=True)
    if command.persist is not None:
        command.persist(loaded, layout, args, result.document)
    try:
        write_runtime_report(layout, name, started_at=started, duration_s=time.perf_counter() - t0, facts=result.facts)
    except GenoPipelineError as exc:  # volatile facts only: the stage's own outputs are written
        print(f"geno-pipeline {name}: warning: runtime report not written: {exc}", file=sys.stderr)
    status = command.status(result.document)
    if status != "ok":
        print(command.failure(result.document), file=sys.stderr)
    return STATUS_EXIT[status]


_STAGES: dict[str, Callable[[], StageCommand]] = {
    "data": _data_command,
    "preflight": _preflight_command,
    "train": _train_command,
    "sweep": _sweep_command,
    "release": _release_command,
}


def _cmd_verify(args: argparse.Namespace) -> int:
    from geno_pipeline.release.signing import default_signature_path, verify_signature
    from geno_pipeline.release.verify import verify_bundle

    problems = verify_bundle(args.directory)
    if args.public_key is not None:
        problems += verify_signature(args.directory, args.public_key, args.signature)
    elif args.signature is not None:
        print("verify: error: --signature needs --public-key (the key the release was signed with)", file=sys.stderr)
        return EXIT_INVALID
    if problems:
        print(f"verify: {args.directory}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_VERIFY
    if args.public_key is not None:
        signature = args.signature or default_signature_path(args.directory)
        print(f"verify: {args.directory}: OK (checksums, schemas, provenance; signature {signature} verified with {args.public_key})")
    else:
        unchecked = default_signature_path(args.directory)
        note = f"; signature {unchecked} not checked: pass --public-key PUB" if unchecked.is_file() else ""
        print(f"verify: {args.directory}: OK{note}")
    return EXIT_OK


def _cmd_sign(args: argparse.Namespace) -> int:
    from geno_pipeline.release.signing import password_from_env, sign_release

    signed = sign_release(args.directory, args.private_key, args.signature, password=password_from_env())
    print(f"sign: {args.directory}: signed {len(signed.files)} files with key {signed.key_fingerprint[:16]}...; wrote {signed.signature}")
    print(f"sign: check it with `geno-pipeline verify {args.directory} --public-key PUB` "
          f"or `model_signing verify key {args.directory} --signature {signed.signature} --public_key PUB`")  # fmt: skip
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from geno_pipeline.validate import validate_file

    count = validate_file(args.file, schema=args.schema)
    print(f"validate: {args.file}: OK ({count} document(s))")
    return EXIT_OK


def _cmd_schemas(args: argparse.Namespace) -> int:
    from geno_pipeline.schemas import load_project_tools, schema_drift, write_schemas

    load_project_tools(args.root)  # a checkout's developer tools write reports with schemas too
    if args.write:
        for path in write_schemas(args.root):
            print(f"schemas: wrote {path}")
        return EXIT_OK
    drift = schema_drift(args.root)
    for line in drift:
        print(f"schemas: {line}", file=sys.stderr)
    if drift:
        print("schemas: fix: run `geno-pipeline schemas --write` and commit the result", file=sys.stderr)
        return EXIT_VERIFY
    print("schemas: committed schemas match the models")
    return EXIT_OK


def _cmd_repro_check(args: argparse.Namespace) -> int:
    from geno_pipeline.repro_check import run_repro_check_cli

    return run_repro_check_cli(Layout.for_root(args.root), lock_ref=args.lock_ref)


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": _cmd_verify,
    "sign": _cmd_sign,
    "validate": _cmd_validate,
    "schemas": _cmd_schemas,
    "repro-check": _cmd_repro_check,
}


DEBUG_ENV = "GENO_PIPELINE_DEBUG"
MESSAGE_LIMIT = 4000  # characters of an error message printed: every quoted value is capped, and so is the whole line


def _debugging(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def launch_if_needed(args: argparse.Namespace, argv: Sequence[str]) -> int | None:
    """`train` with runtime.nproc_per_node > 1 outside a job: launch the workers and return the job's exit code.

    None when this process should train itself: one process, or a worker of a job (torchrun's or ours) whose
    environment names it."""
    from geno_pipeline.config import LoadedParams
    from geno_pipeline.distributed import job_from_env, rendezvous_port
    from geno_pipeline.distributed.launch import die_with_launcher, launch_workers

    if job_from_env(os.environ) is not None:
        die_with_launcher()
        return None
    layout = Layout.for_root(args.root)
    loaded = LoadedParams.read(args.params if args.params is not None else layout.params)
    if not loaded.valid or loaded.params.runtime.nproc_per_node == 1:
        return None  # invalid params: the stage reports them as usual
    runtime = loaded.params.runtime
    port = rendezvous_port()
    print(
        f"train: launching {runtime.nproc_per_node} workers (backend {runtime.dist_backend}, {runtime.cpu_threads} CPU thread(s) "
        f"each, rendezvous 127.0.0.1:{port}, collective timeout {runtime.dist_timeout_s} s)",
        flush=True,
    )
    return launch_workers(
        argv, nproc=runtime.nproc_per_node, port=port, timeout_s=runtime.dist_timeout_s, threads=runtime.cpu_threads,
        backend=runtime.dist_backend,
    )  # fmt: skip


def printable(text: str) -> str:
    """`text` as the terminal can take it: a lone surrogate (from a file name that is not UTF-8) is written as an escape
    instead of making the error message itself fail."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _GuardedStdout:
    """sys.stdout for the duration of `main`: a failed write or flush (stdout on /dev/full, a full disk behind `>`, a
    closed pipe) becomes one `OutputError` naming stdout instead of an `OSError` blamed on the project folder."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guarded(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except OSError as exc:
            _silence_stdout(self._stream)
            reason = exc.strerror or type(exc).__name__
            raise OutputError(
                f"stdout: cannot write this command's output: {reason} (errno {exc.errno}); the files a stage writes are complete "
                "or untouched; fix: send stdout to a writable file, terminal or pipe (check the `>` or `|`) and run again"
            ) from None

    def write(self, text: str) -> int:
        return int(self._guarded(lambda: self._stream.write(text)))

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence_stdout(stream: Any) -> None:
    """Point the stdout descriptor at /dev/null, so the interpreter's own flush at exit does not fail a second time
    (what Python's documentation advises for a broken pipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


@contextlib.contextmanager
def _guarded_stdout() -> Iterator[None]:
    original = sys.stdout
    sys.stdout = _GuardedStdout(original)  # type: ignore[assignment]
    try:
        yield
        sys.stdout.flush()  # what is still buffered fails here, inside the command, not at interpreter exit
    finally:
        sys.stdout = original


def main(argv: Sequence[str] | None = None, *, process: bool = False) -> int:
    """Run the CLI; returns the exit code (see EXIT_CODES). `process`: this is the whole process (the console script),
    so once the command has finished a late SIGTERM is ignored rather than killing the interpreter's teardown."""
    from geno_pipeline.workspace import Terminated, terminate_as_interrupt, workspace_lock

    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    # a worker of `train`'s own launcher leaves the lock and the signals to the launcher; of a job another launcher
    # (torchrun) started, rank 0 holds the lock and the other ranks, which write nothing, do not
    launched = LAUNCHER_PID_ENV in os.environ
    takes_the_lock = args.command in _STAGES and not launched and os.environ.get("RANK", "0") == "0"
    try:
        with contextlib.ExitStack() as held:
            held.enter_context(_guarded_stdout())
            if not launched:
                held.enter_context(terminate_as_interrupt(then_ignore=process))
            if takes_the_lock:
                held.enter_context(workspace_lock(Path(args.root), args.command))
            if args.command == "train" and (code := launch_if_needed(args, raw)) is not None:
                return code
            if args.command in _STAGES:
                return run_stage(args.command, _STAGES[args.command](), args)
            return _HANDLERS[args.command](args)
    except GenoPipelineError as exc:
        print(printable(f"geno-pipeline {args.command}: error: {shorten(str(exc), MESSAGE_LIMIT)}"), file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print(f"geno-pipeline {args.command}: terminated (SIGTERM); nothing was half-written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"geno-pipeline {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a write or read outside the typed boundary: still one named line
        from geno_pipeline.fsio import storage_error

        error = storage_error(Path(exc.filename) if exc.filename else Path("."), exc, "failed")
        print(f"geno-pipeline {args.command}: error: {error}", file=sys.stderr)
        if _debugging(args):
            traceback.print_exc()
        return error.exit_code
    except Exception as exc:
        print(
            f"geno-pipeline {args.command}: internal error (a bug; please report it): {type(exc).__name__}: {exc}; "
            f"rerun with --debug (or {DEBUG_ENV}=1) for the traceback",
            file=sys.stderr,
        )
        if _debugging(args):
            traceback.print_exc()
        return EXIT_INTERNAL


def entrypoint() -> None:
    """Console-script entry point (and `python -m geno_pipeline`): OpenMP threads spin briefly before they sleep unless
    the user chose otherwise (`openmp.apply_wait_policy`, before anything loads torch)."""
    apply_wait_policy(os.environ)
    sys.exit(main(process=True))

"""`geno-pipeline train` with runtime.nproc_per_node > 1: start the workers through torch.distributed.run's launcher API.

Each worker runs `python -m geno_pipeline train ...` with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set,
so it joins the job exactly as under `torchrun`. The launcher watches them every 0.1 s: when one exits or is killed it
stops the others (SIGTERM, then SIGKILL after `SHUTDOWN_GRACE_S`) and this process exits non-zero. Workers ask the
kernel to kill them if the launcher itself dies, so no worker outlives the job.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geno_pipeline.distributed import port_is_free
from geno_pipeline.errors import EXIT_DISTRIBUTED, EXIT_INTERNAL, EXIT_INVALID, DistributedError
from geno_pipeline.processes import die_with_parent

if TYPE_CHECKING:
    from torch.distributed.elastic.agent.server.api import WorkerGroup
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

__all__ = ["LAUNCHER_PID_ENV", "SHUTDOWN_GRACE_S", "WorkerExit", "describe_exit", "die_with_launcher", "exit_code_of", "launch_workers"]

LAUNCHER_PID_ENV = "GENO_PIPELINE_LAUNCHER_PID"
SHUTDOWN_GRACE_S = 5  # stopping the workers: SIGTERM, then SIGKILL to those still alive this many seconds later


@dataclass(frozen=True)
class WorkerExit:
    """How one worker ended (from the launcher's failure record)."""

    rank: int
    pid: int
    exitcode: int  # negative: killed by that signal


def describe_exit(worker: WorkerExit, *, backend: str = "gloo", timeout_s: int | None = None) -> str:
    """`worker rank 1 (pid 123): killed by SIGKILL` / `exited with 5`. On NCCL (`backend` nccl, or auto) a SIGABRT is
    most likely NCCL's watchdog ending a worker whose collective timed out or failed
    (TORCH_NCCL_ASYNC_ERROR_HANDLING): a collective there fails on a watchdog thread, not in Python, so the worker
    cannot say so itself."""
    if worker.exitcode < 0:
        try:
            name = signal.Signals(-worker.exitcode).name
        except ValueError:
            name = f"signal {-worker.exitcode}"
        what = "stopped by the launcher (SIGTERM)" if name == "SIGTERM" else f"killed by {name}"
        if name == "SIGABRT" and backend in ("nccl", "auto"):
            bound = f"runtime.dist_timeout_s ({timeout_s} s)" if timeout_s is not None else "runtime.dist_timeout_s"
            what = (
                f"aborted (SIGABRT); on NCCL this is the watchdog ending a worker whose collective ran past {bound} or failed "
                f"(its [rank{worker.rank}] 'Watchdog caught collective operation timeout' or NCCL error line above names the collective)"
            )
    else:
        what = f"exited with {worker.exitcode}"
    return f"worker rank {worker.rank} (pid {worker.pid}): {what}"


def exit_code_of(workers: Sequence[WorkerExit]) -> int:
    """The job's exit code: a worker's own error code (2..9) when one gave it, else EXIT_DISTRIBUTED."""
    own = sorted({w.exitcode for w in workers if EXIT_INVALID <= w.exitcode <= EXIT_DISTRIBUTED and w.exitcode != EXIT_DISTRIBUTED})
    if own:
        return own[0]
    return EXIT_DISTRIBUTED if workers else EXIT_INTERNAL


def die_with_launcher(environ: Mapping[str, str] | None = None) -> None:
    """In a worker this package launched: have the kernel SIGKILL it when the launcher dies (Linux), or exit now if it already has."""
    env = os.environ if environ is None else environ
    launcher = env.get(LAUNCHER_PID_ENV, "")
    if not launcher.isdigit():
        return
    if die_with_parent(int(launcher)) is False:  # the launcher died before the request took effect
        raise DistributedError(f"the launcher (pid {launcher}) is gone; this worker stops")


def launch_workers(argv: Sequence[str], *, nproc: int, port: int, timeout_s: int, threads: int, backend: str = "gloo") -> int:
    """Run `python -m geno_pipeline *argv` as `nproc` workers of one job on this node; returns the job's exit code."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher import api as launcher_api

    if not port_is_free(port):  # a listener there (another job's store, or one that never answers) would hang the rendezvous
        raise DistributedError(
            f"rendezvous port 127.0.0.1:{port} is in use (another job, or another program listening there), so {nproc} workers "
            "cannot meet on it; fix: stop what listens there, or set MASTER_PORT to a free port"
        )
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we print one clear line instead
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    config = launcher_api.LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"geno-pipeline-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_configs={"timeout": timeout_s},
        max_restarts=0,
        monitor_interval=0.1,
        local_addr="127.0.0.1",
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    launcher_api.LocalElasticAgent = _agent_class(LocalElasticAgent)  # type: ignore[attr-defined]  # the agent launch_agent builds
    try:
        launcher_api.elastic_launch(config, sys.executable)("-m", "geno_pipeline", *argv)
    except ChildFailedError as exc:
        workers = sorted(
            (WorkerExit(rank, f.pid, f.exitcode) for rank, f in exc.failures.items()), key=lambda w: (w.exitcode == -signal.SIGTERM, w.rank)
        )
        words = "; ".join(describe_exit(w, backend=backend, timeout_s=timeout_s) for w in workers)
        print(f"train: the job stopped: {words}", file=sys.stderr)
        code = exit_code_of(workers)
        if code == EXIT_DISTRIBUTED:
            print("train: every worker is stopped; resume with `geno-pipeline train --resume auto`", file=sys.stderr)
        return code
    except SignalException as exc:  # the launcher was told to stop: the workers are stopped too
        print(f"train: received {exc.sigval.name}; stopped every worker; resume with `geno-pipeline train --resume auto`", file=sys.stderr)
        return 128 + int(exc.sigval)
    except (RuntimeError, ValueError, OSError) as exc:  # rendezvous: port taken, timeout
        text = " ".join(str(exc).split())[:300]
        raise DistributedError(
            f"could not start {nproc} workers on 127.0.0.1:{port} ({type(exc).__name__}: {text}); "
            "fix: free the port or set MASTER_PORT to a free one"
        ) from None
    finally:
        launcher_api.LocalElasticAgent = LocalElasticAgent  # type: ignore[attr-defined]
        os.environ.pop(LAUNCHER_PID_ENV, None)
    return 0


def _agent_class(base: type[LocalElasticAgent]) -> type[LocalElasticAgent]:
    """torch's LocalElasticAgent, except that the workers left when one fails get `shutdown_timeout` to exit.

    torch honours `shutdown_timeout` only when the launcher itself is signalled. When a worker fails, the process
    context's `_poll` stops the others with `close()`, whose default grace is a fixed 30 s: a worker that hangs for good
    (stopped, or stuck in native code where Python's SIGTERM handler never runs) then holds the failed job 30 s past
    the collective timeout. Here every stop of the workers waits at most `shutdown_timeout` before SIGKILL.
    """

    class Agent(base):  # type: ignore[valid-type,misc]
        def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
            pids: dict[int, Any] = super()._start_workers(worker_group)
            context = self._pcontext
            if context is not None:
                context.close = _bounded_close(context.close, self._shutdown_timeout)
            return pids

    return Agent


def _bounded_close(close: Callable[[signal.Signals | None, int], None], grace: int) -> Callable[..., None]:
    """`PContext.close(death_sig=None, timeout=30)` that waits at most `grace` seconds before SIGKILL."""

    def bounded(death_sig: signal.Signals | None = None, timeout: int = grace) -> None:
        close(death_sig, min(timeout, grace))

    return bounded

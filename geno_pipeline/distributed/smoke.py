"""A two-process loopback smoke test of a torch.distributed backend (preflight's `distributed.smoke`).

`python -m geno_pipeline.distributed.smoke --rank R --port P --backend B --timeout S` is one of the two processes: it
joins over TCP on 127.0.0.1, all-reduces [R + 1] (expects [3]) and all-gathers [R] (expects [0, 1]), then prints one
JSON line. `run_smoke_test` starts both and bounds the whole test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from geno_pipeline.distributed import JOB_VARIABLES

__all__ = ["SmokeResult", "free_port", "run_smoke_test"]


@dataclass(frozen=True)
class SmokeResult:
    """Outcome of the two-process test."""

    ok: bool
    seconds: float
    error: str | None


def free_port() -> int:
    """A TCP port the kernel says is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_smoke_test(backend: str, *, timeout_s: float) -> SmokeResult:
    """Run both processes with one CPU thread each; kill them when the bound passes."""
    port, start = free_port(), time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in JOB_VARIABLES} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "geno_pipeline.distributed.smoke", "--port", str(port), "--backend", backend]
    command += ["--timeout", str(timeout_s)]
    procs = [
        subprocess.Popen([*command, "--rank", str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for rank in (0, 1)
    ]
    outputs: list[tuple[int | None, str, str]] = []
    try:
        for proc in procs:
            remaining = max(0.1, timeout_s - (time.perf_counter() - start))
            out, err = proc.communicate(timeout=remaining)
            outputs.append((proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        return SmokeResult(False, time.perf_counter() - start, f"no result within {timeout_s:g} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - start
    for rank, (code, out, err) in enumerate(outputs):
        try:
            result = json.loads(_last_line(out))
        except ValueError:
            result = {}
        if code != 0 or result.get("ok") is not True:
            reason = result.get("error") or (f"wrong result {result}" if result else _last_line(err) or f"exit {code}")
            return SmokeResult(False, seconds, f"rank {rank}: {reason}")
    return SmokeResult(True, seconds, None)


def _worker(rank: int, port: int, backend: str, timeout_s: float) -> dict[str, object]:
    import datetime as dt

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=dt.timedelta(seconds=timeout_s)
    )
    try:
        value = torch.tensor([float(rank + 1)], device=device)
        dist.all_reduce(value)
        parts = [torch.zeros(1, device=device) for _ in range(2)]
        dist.all_gather(parts, torch.tensor([float(rank)], device=device))
        reduced, gathered = float(value.item()), [float(p.item()) for p in parts]
    finally:
        dist.destroy_process_group()
    ok = reduced == 3.0 and gathered == [0.0, 1.0]
    return {"ok": ok, "all_reduce": reduced, "all_gather": gathered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one process of the two-process torch.distributed smoke test")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        result = _worker(args.rank, args.port, args.backend, args.timeout)
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"}
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""scripts/gpu_proof.sh: a clear message and exit 2 where no GPU is; the whole proof rehearsed on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def proof(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # no GPU for CUDA, on any machine
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_proof.sh"), str(out), *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def test_without_a_gpu_the_proof_says_so_and_exits_2(tmp_path: Path) -> None:
    done = proof(out=tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("gpu_proof: no usable CUDA device on this machine (torch ")
    assert "Nothing was run." in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_proof_rehearsed_on_the_cpu_reproduces_byte_for_byte(tmp_path: Path) -> None:
    """Every step of the proof (preflight, the tiny profile twice, SIGKILL at a checkpoint and resume, the default
    profile's timing) on the CPU, so the script a GPU run depends on is known to work."""
    done = proof("--cpu-rehearsal", "--default-steps", "20", "--skip-tests", out=tmp_path / "out")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["preflight_exit"] == 0 and summary["twice_identical"] and summary["resume_identical"]
    assert summary["killed_after_step"] in (-1, 4, 8, 12)  # a checkpoint every 4 steps (-1: it finished first; resume still runs)
    figures, inline = summary["default_cpu"], summary["default_cpu_no_prefetch"]
    assert figures["prefetch"] is True and inline["prefetch"] is False
    assert figures["steps_per_second"] > 0 and 0 <= figures["input_share"] < 1 and 0 < inline["input_share"] < 1
    assert "SHA256SUMS" in (tmp_path / "out" / "gpu_proof.log").read_text()

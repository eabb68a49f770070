"""Integration: the whole DVC pipeline on the tiny profile in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).resolve().parent / "params_tiny.yaml"


def run(cmd: list[str], cwd: Path, check: bool = True, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(extra_env or {})}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(cwd: Path, *args: str, check: bool = True, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "dvc", *args], cwd, check, extra_env)


def gp(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "geno_pipeline", *args], cwd, check)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree's tracked and untracked-not-ignored files in a fresh git repo, with the tiny params; nothing
    run in it (copy it before running anything)."""
    root = tmp_path_factory.mktemp("pipeline") / "project"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    shutil.copy(TINY, root / "params.yaml")
    (root / "dvc.lock").unlink(missing_ok=True)
    shutil.rmtree(root / "reports", ignore_errors=True)
    run(["git", "init", "-q"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], root)
    return root


@pytest.fixture(scope="module")
def reproduced(project: Path) -> tuple[Path, str]:
    """`dvc repro` run once in a copy of the project, and committed (with DVC's cache), and what it printed. Copy it
    (`_copy_of`) before changing anything."""
    root = _copy_of(project, project.parent / "reproduced")
    first = dvc(root, "repro")
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reference run"], root)
    return root, first.stdout


def _copy_of(source: Path, dest: Path) -> Path:
    """A copy of a project folder: its git history, and its outputs and DVC cache where it has run."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


@pytest.mark.slow
def test_pipeline_end_to_end_and_reproducible(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    project, printed = _copy_of(reproduced[0], tmp_path / "e2e"), reproduced[1]
    order = [line.split("'")[1] for line in printed.splitlines() if line.startswith("Running stage")]
    assert order == ["data", "preflight", "train", "sweep", "release"]
    bundle = project / "artifacts" / "release"
    assert run(["sha256sum", "-c", "--strict", "SHA256SUMS"], bundle).returncode == 0
    gp(project, "verify", "artifacts/release")
    sums = (bundle / "SHA256SUMS").read_bytes()
    assert run(["git", "status", "--porcelain"], project).stdout == ""  # the reference run is committed

    # nothing changed: preflight reruns (always_changed), train and release do not, and no tracked file changes
    second = dvc(project, "repro")
    assert "Running stage 'preflight'" in second.stdout
    assert "Running stage 'train'" not in second.stdout and "Running stage 'release'" not in second.stdout
    assert run(["git", "status", "--porcelain"], project).stdout == ""

    # a forced full rerun reproduces it bit for bit: same lock, same reports, same release
    dvc(project, "repro", "-f")
    assert (bundle / "SHA256SUMS").read_bytes() == sums
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    check = gp(project, "repro-check")
    assert "data: reproduced" in check.stdout and "train: reproduced" in check.stdout and "release: reproduced" in check.stdout
    report = json.loads((project / "reports" / "runtime" / "repro_check.json").read_text())
    assert report["ok"] is True and report["changed_inputs"] == []
    assert run(["git", "status", "--porcelain"], project).stdout == ""  # the verdict is volatile: not a tracked file

    # metrics and plots are visible to DVC
    metrics = dvc(project, "metrics", "show").stdout
    assert "heldout_loss" in metrics and "identity_baseline_loss" in metrics

    # a changed param: repro-check names the train and release files that changed
    params = (project / "params.yaml").read_text().replace("  seed: 5\n", "  seed: 7\n")
    (project / "params.yaml").write_text(params)
    dvc(project, "repro")
    changed = gp(project, "repro-check", check=False)
    assert changed.returncode == 7
    assert "data: reproduced" in changed.stdout
    assert "train: CHANGED" in changed.stdout and "artifacts/train/model.safetensors" in changed.stdout
    assert "release: CHANGED" in changed.stdout and "artifacts/release/model.safetensors" in changed.stdout
    assert "reports/metrics.json: train_loss" in changed.stdout  # which field, not a guess at the cause
    assert "reports/train.json: collapse.final_check.heldout_loss" in changed.stdout
    assert "these inputs changed since the reference: params.yaml" in changed.stdout


@pytest.mark.slow
def test_pipeline_sweep_gate_under_dvc(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    """sweep.seeds and release.sweep_max_ratio set in params of a reproduced project: dvc repro sweeps (train, which
    they do not touch, is not rerun), gates the release on it, and reproduces."""
    other = _copy_of(reproduced[0], tmp_path / "swept")
    text = (other / "params.yaml").read_text().replace("sweep:\n  seeds: 0", "sweep:\n  seeds: 2")
    (other / "params.yaml").write_text(
        text.replace("sweep_max_ratio: null", "sweep_max_ratio: 100.0").replace("sigmas: 3.0", "sigmas: 1000.0")
    )
    base = __import__("yaml").safe_load((other / "params.yaml").read_text())["train"]["seed"]
    first = dvc(other, "repro")
    assert f"sweep: 2/2 seeds completed ({base + 1}, {base + 2}); wrote reports/sweep.json" in first.stdout
    assert "Running stage 'train'" not in first.stdout and "Running stage 'release'" in first.stdout
    metadata = json.loads((other / "artifacts" / "release" / "metadata.json").read_text())
    assert metadata["sweep"]["seeds"] == [base + 1, base + 2] and metadata["sweep"]["max_ratio"] == 100.0
    sums = (other / "artifacts" / "release" / "SHA256SUMS").read_bytes()
    sweep = (other / "reports" / "sweep.json").read_bytes()
    shutil.rmtree(other / "artifacts" / "sweep")  # from scratch: the seeded runs are retrained, not reused
    dvc(other, "repro", "--force", "--single-item", "sweep")
    dvc(other, "repro", "--force", "--single-item", "release")
    assert (other / "reports" / "sweep.json").read_bytes() == sweep
    assert (other / "artifacts" / "release" / "SHA256SUMS").read_bytes() == sums
    failing = (other / "params.yaml").read_text().replace("sweep_max_ratio: 100.0", "sweep_max_ratio: 0.001")
    (other / "params.yaml").write_text(failing)
    proc = dvc(other, "repro", check=False)
    assert proc.returncode != 0 and "worst sweep seed under release.sweep_max_ratio" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_pipeline_changed_fasta_reruns_data(project: Path, tmp_path: Path) -> None:
    other = _copy_of(project, tmp_path / "fasta")
    rng = __import__("random").Random(3)
    fasta = other / "genomes" / "ref.fa"
    fasta.write_text(">r\n" + "".join(rng.choice("ACGT") for _ in range(40_000)) + "\n")
    text = (other / "params.yaml").read_text().replace("source: synthetic", "source: fasta")
    (other / "params.yaml").write_text(text.replace("fasta_path: null", "fasta_path: genomes/ref.fa"))
    assert "Running stage 'data'" in dvc(other, "repro", "data").stdout
    assert "didn't change" in dvc(other, "repro", "data").stdout
    fasta.write_text(">r\n" + "".join(rng.choice("ACGT") for _ in range(40_000)) + "\n")  # another sequence, same name
    assert "Running stage 'data'" in dvc(other, "repro", "data").stdout


@pytest.mark.slow
def test_pipeline_preflight_failure_stops_dvc(project: Path, tmp_path: Path) -> None:
    other = _copy_of(project, tmp_path / "fail")
    text = (other / "params.yaml").read_text().replace("require_accelerator: false", "require_accelerator: true")
    (other / "params.yaml").write_text(text)
    proc = dvc(other, "repro", check=False, extra_env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU for CUDA, on any machine
    assert proc.returncode != 0
    assert "Running stage 'train'" not in proc.stdout
    report = json.loads((other / "reports" / "preflight.json").read_text())
    assert report["ok"] is False and "accelerator.not_found" in {i["code"] for i in report["issues"]}
    assert not (other / "artifacts" / "train").exists()


REAL_GENOME = "genomes/GCF_001457455.1_NCTC11397_genomic.fna.gz"  # -> examples/genomes/ (see its README)


@pytest.mark.slow
def test_pipeline_on_the_vendored_real_genome(project: Path, tmp_path: Path) -> None:
    """data -> preflight -> train (tiny) -> release -> verify on C. diphtheriae NCTC11397 (RefSeq NZ_LN831026.1)."""
    other = _copy_of(project, tmp_path / "real")
    text = (other / "params.yaml").read_text().replace("source: synthetic", "source: fasta")
    (other / "params.yaml").write_text(text.replace("fasta_path: null", f"fasta_path: {REAL_GENOME}"))
    first = dvc(other, "repro")
    assert [line.split("'")[1] for line in first.stdout.splitlines() if line.startswith("Running stage")] == [
        "data",
        "preflight",
        "train",
        "sweep",
        "release",
    ]
    assert "data: read 2463666 bases in 1 record (1 used): 0 N (IUPAC codes 0), 0 soft-masked" in first.stdout
    manifest = json.loads((other / "artifacts" / "dataset" / "dataset_manifest.json").read_text())
    assert manifest["source"]["fasta_sha256"] == "e9f88cc1a5c1f0e10f372df91852e44630cbeb1d424a34566ed159e5e94850b3"
    assert [(r["name"], r["length"], r["role"]) for r in manifest["records"]] == [("NZ_LN831026.1", 2463666, "train+valid")]
    assert manifest["counts"]["candidate_slots"] == 2463666 // (64 + 32)
    preflight = json.loads((other / "reports" / "preflight.json").read_text())
    assert preflight["ok"] is True
    bundle = other / "artifacts" / "release"
    assert run(["sha256sum", "-c", "--strict", "SHA256SUMS"], bundle).returncode == 0
    assert "ok" in gp(other, "verify", "artifacts/release").stdout.lower()
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["params"]["data"]["fasta_path"] == REAL_GENOME
    # whoever holds only the bundle can tell which genome it learned from
    assert metadata["dataset_source"]["fasta_sha256"] == manifest["source"]["fasta_sha256"]
    assert [(r["name"], r["role"]) for r in metadata["dataset_records"]] == [("NZ_LN831026.1", "train+valid")]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert f"`GCF_001457455.1_NCTC11397_genomic.fna.gz` (FASTA, sha256 `{manifest['source']['fasta_sha256']}`" in card
    assert "name: GCF_001457455.1_NCTC11397_genomic.fna.gz" in card.split("---")[1]


@pytest.mark.slow  # runs an experiment and every README block
def test_every_readme_command_block_runs_as_written(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    """Every command block of the README after the two opening commands (which CI runs itself; the first one's `dvc
    repro` is the reproduced project's) runs as written, in order, on the tiny profile."""
    from tests.test_readme import blocks

    root = _copy_of(reproduced[0], tmp_path / "readme")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    for key, value in (("user.name", "t"), ("user.email", "t@t")):
        run(["git", "config", key, value], root)

    def run_block(command: list[str], what: str) -> str:
        proc = run(command, root, check=False, extra_env=env)
        assert proc.returncode == 0, f"{what}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    bash = blocks("bash")
    outputs = [run_block(["bash", "-euo", "pipefail", "-c", block], f"bash block {i + 3}") for i, block in enumerate(bash[2:])]
    (python,) = blocks("python")
    printed = run_block([sys.executable, "-c", python], "python block")
    assert "verify: artifacts/release: OK" in "".join(outputs)
    stale = json.loads(run_block([sys.executable, "-m", "dvc", "status", "--json"], "dvc status"))  # after stop, resume, sign...
    assert set(stale) <= {"preflight"}, stale
    assert printed.startswith("torch.Size([1, 16]) torch.Size([1, 16]) tensor(")

"""Release: bundle, determinism, tamper detection by verify, gates, and the loader round-trip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from geno_pipeline import load_released_model
from geno_pipeline.config import TrainStageParams, load_params
from geno_pipeline.errors import VerifyError
from geno_pipeline.release.verify import verify_bundle
from geno_pipeline.training.determinism import TrainerSeeds
from geno_pipeline.training.heldout import build_held_out, evaluate
from geno_pipeline.training.model import build_world_model
from tests.conftest import copy_project, run_main, write_params

REPO = Path(__file__).resolve().parent.parent


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`geno-pipeline ARGS --root ROOT`: in this process, or in a process of its own with extra environment `env`."""
    if env is None:
        return run_main(*args, "--root", str(root))
    return subprocess.run(
        [sys.executable, "-m", "geno_pipeline", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def released(tiny_released: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's tiny release (each stage run by the command line)."""
    return copy_project(tiny_released, tmp_path_factory.mktemp("release") / "project")


def test_release_bundle_contents_and_coreutils(released: Path) -> None:
    bundle = released / "artifacts" / "release"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "MODEL_CARD.md",
        "SHA256SUMS",
        "heldout.png",
        "loss.png",
        "metadata.json",
        "metrics.json",
        "model.safetensors",
        "provenance.intoto.json",
    ]
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert verify_bundle(bundle) == []
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "verify", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout
    provenance = json.loads((bundle / "provenance.intoto.json").read_text())
    assert provenance["_type"] == "https://in-toto.io/Statement/v1"
    assert provenance["predicateType"] == "https://slsa.dev/provenance/v1"
    assert {s["name"] for s in provenance["subject"]} == {
        "MODEL_CARD.md", "heldout.png", "loss.png", "metadata.json", "metrics.json", "model.safetensors"
    }  # fmt: skip
    deps = {d.get("name") for d in provenance["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert {"source", "dataset_manifest", "torch"} <= deps
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["created_at"] is None and metadata["source_digest"].startswith("sha256:")
    assert "git" not in json.dumps(metadata).lower().replace("digest", "")
    runtime = json.loads((released / "reports" / "runtime" / "release.json").read_text())
    assert "git_commit_at_release" in runtime["facts"]
    for name in ("metadata.json", "provenance.intoto.json", "metrics.json"):
        assert cli_validate(bundle / name).returncode == 0


def cli_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geno_pipeline", "validate", str(path)], capture_output=True, text=True)


@pytest.mark.slow
def test_release_twice_identical_and_source_date_epoch(released: Path) -> None:
    sums = (released / "artifacts" / "release" / "SHA256SUMS").read_bytes()
    assert cli(released, "release").returncode == 0
    assert (released / "artifacts" / "release" / "SHA256SUMS").read_bytes() == sums
    assert cli(released, "release", env={"SOURCE_DATE_EPOCH": "1700000000"}).returncode == 0
    metadata = json.loads((released / "artifacts" / "release" / "metadata.json").read_text())
    assert metadata["created_at"] == "2023-11-14T22:13:20Z"
    assert cli(released, "release").returncode == 0
    assert (released / "artifacts" / "release" / "SHA256SUMS").read_bytes() == sums


def _copy_bundle(released: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(released / "artifacts" / "release", dest)
    return dest


@pytest.mark.parametrize("name", ["model.safetensors", "metrics.json", "metadata.json", "provenance.intoto.json", "MODEL_CARD.md"])
def test_release_verify_flipped_byte(released: Path, tmp_path: Path, name: str) -> None:
    bundle = _copy_bundle(released, tmp_path)
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "verify", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 7
    assert f"{name}: sha256 mismatch" in proc.stderr


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


TAMPER = {
    "deleted file": (lambda b: (b / "metrics.json").unlink(), "metrics.json: listed but missing"),
    "extra file": (lambda b: (b / "notes.txt").write_text("hi\n"), "notes.txt: present but not listed in SHA256SUMS"),
    "dotdot entry": (lambda b: _append(b / "SHA256SUMS", f"{'0' * 64}  ../x\n"), "unsafe name '../x'"),
    "absolute entry": (lambda b: _append(b / "SHA256SUMS", f"{'0' * 64}  /etc/passwd\n"), "unsafe name '/etc/passwd'"),
    "symlink": (lambda b: (b / "link").symlink_to(b / "metrics.json"), "link: symlink not allowed in bundle"),
    "malformed line": (lambda b: _append(b / "SHA256SUMS", "this is not a checksum line\n"), "malformed line"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_release_verify_tampering(released: Path, tmp_path: Path, case: str) -> None:
    bundle = _copy_bundle(released, tmp_path)
    action, needle = TAMPER[case]
    action(bundle)
    problems = verify_bundle(bundle)
    assert any(needle in p for p in problems), problems
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "verify", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 7 and needle in proc.stderr


def test_release_verify_lists_every_problem(released: Path, tmp_path: Path) -> None:
    bundle = _copy_bundle(released, tmp_path)
    (bundle / "metrics.json").unlink()
    (bundle / "extra.bin").write_bytes(b"x")
    problems = verify_bundle(bundle)
    assert any("metrics.json: listed but missing" in p for p in problems)
    assert any("extra.bin: present but not listed" in p for p in problems)


def test_release_verify_provenance_must_agree(released: Path, tmp_path: Path) -> None:
    bundle = _copy_bundle(released, tmp_path)
    doc = json.loads((bundle / "provenance.intoto.json").read_text())
    doc["subject"][0]["digest"]["sha256"] = "0" * 64
    (bundle / "provenance.intoto.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    subprocess.run(
        ["bash", "-c", "sha256sum -- * > SHA256SUMS.new && grep -v ' SHA256SUMS$' SHA256SUMS.new > SHA256SUMS && rm SHA256SUMS.new"],
        cwd=bundle,
        check=True,
    )
    problems = verify_bundle(bundle)
    assert any("digest differs from SHA256SUMS" in p for p in problems), problems


def _gate(released: Path, tmp_path: Path, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "gate"
    shutil.copytree(released, root, symlinks=True)
    before = {p.name: p.read_bytes() for p in (root / "artifacts" / "release").iterdir()}
    mutate(root)
    proc = cli(root, "release")
    assert proc.returncode == 6, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (root / "artifacts" / "release").iterdir()} == before  # nothing written
    assert not [p for p in (root / "artifacts").iterdir() if p.name.startswith(".release")]


def test_release_gate_preflight_not_ok(released: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        path = root / "artifacts" / "preflight" / "outcome.json"
        doc = json.loads(path.read_text())
        doc.update(ok=False, error_codes=["accelerator.not_found"])
        path.write_text(json.dumps(doc))

    _gate(released, tmp_path, mutate, "preflight reported errors accelerator.not_found")


@pytest.mark.slow
def test_release_gate_training_stopped_early(released: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        assert cli(root, "train", "--no-progress", "--stop-after-step", "5").returncode == 0

    _gate(released, tmp_path, mutate, "status stopped, 5/12 steps")


@pytest.mark.slow
def test_release_gate_collapse_alert_at_final_observation(released: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        model = load_params(root / "params.yaml").train.model.model_dump()
        write_params(root, train={"weight_decay": 400.0, "model": {**model, "residual": False}})
        assert cli(root, "preflight").returncode == 0
        assert cli(root, "train", "--no-progress").returncode == 0

    _gate(released, tmp_path, mutate, "no collapse alert at the final observation")


@pytest.mark.slow
def test_release_allow_collapse_alerts_releases(released: Path, tmp_path: Path) -> None:
    root = tmp_path / "allow"
    shutil.copytree(released, root, symlinks=True)
    model = load_params(root / "params.yaml").train.model.model_dump()
    write_params(root, train={"weight_decay": 400.0, "model": {**model, "residual": False}}, release={"allow_collapse_alerts": True})
    for stage in ("preflight", "train", "release"):
        assert cli(root, stage).returncode == 0
    assert json.loads((root / "artifacts" / "release" / "metadata.json").read_text())["collapse_status"] == "alerts_acknowledged"


def test_release_load_released_model_round_trip(released: Path) -> None:
    model = load_released_model(released / "artifacts" / "release")
    params = TrainStageParams.from_params(load_params(released / "params.yaml"))
    seeds = TrainerSeeds.from_base(params.train.seed)
    from safetensors.torch import load_file

    from geno_pipeline.data.dataset import load_dataset

    dataset = load_dataset(released / "artifacts" / "dataset")
    trained = build_world_model(
        window_length=dataset.manifest.counts.window_length,
        params=params.train.model,
        encoder_seed=seeds.encoder,
        init_seed=seeds.model_init,
    )
    trained.load_state_dict(load_file(released / "artifacts" / "train" / "model.safetensors"))
    held = build_held_out(trained, dataset, params.train, params.collapse, seeds, "cpu")
    a, b = evaluate(trained, held), evaluate(model, held)
    loss_a, pred_a, loss_b, pred_b = a.loss, a.prediction, b.loss, b.prediction
    assert torch.equal(pred_a, pred_b) and loss_a == loss_b


def test_release_model_card_metadata_and_its_how_to_use_code(released: Path) -> None:
    """The card opens with a YAML metadata block (license, library, tags, model-index with the held-out figures), names
    the reference and the dataset, and its "How to use" code runs as written on this bundle (a real window put in for
    the placeholder)."""
    import numpy as np
    import yaml

    bundle = released / "artifacts" / "release"
    card = (bundle / "MODEL_CARD.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    metrics = json.loads((bundle / "metrics.json").read_text())
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert (front["license"], front["library_name"]) == ("apache-2.0", "geno-pipeline") and "dna" in front["tags"]
    (result,) = front["model-index"][0]["results"]
    assert front["model-index"][0]["name"] == metadata["run_id"]
    assert result["dataset"] == {"type": "dna-windows", "name": "synthetic genome (seed 3, 60,000 bases)", "split": "held-out windows",
                                 "revision": metadata["dataset_id"]}  # fmt: skip
    losses = ("final_heldout_loss", "identity_baseline_heldout_loss")
    want = [round(metrics[k], 4) for k in losses] + [round(metrics["heldout_to_baseline"], 3)]
    assert [m["value"] for m in result["metrics"]] == want
    assert metadata["dataset_source"]["kind"] == "synthetic" and [r["name"] for r in metadata["dataset_records"]] == ["synthetic"]
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", card):  # the charts it shows are files of the bundle, and PNGs
        assert image in ("heldout.png", "loss.png") and (bundle / image).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "](heldout.png)" in card and "](loss.png)" in card
    code = card.split("```python\n")[1].split("```")[0]
    window = "".join("ACGT"[int(b)] for b in np.load(released / "artifacts" / "dataset" / "valid_windows.npy")[0][:64])
    scope: dict[str, object] = {}
    exec(code.replace('"ACGT..."', repr(window)).replace("<this directory>", str(bundle)), scope)
    assert tuple(scope["state"].shape) == (1, 16) and tuple(scope["after"].shape) == (1, 16)  # type: ignore[attr-defined]
    assert float(scope["score"][0]) > 0  # type: ignore[index]


def test_release_loader_refuses_tampered_bundle(released: Path, tmp_path: Path) -> None:
    bundle = _copy_bundle(released, tmp_path)
    data = bytearray((bundle / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (bundle / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=r"model\.safetensors: sha256 mismatch"):
        load_released_model(bundle)


def _reseal(bundle: Path) -> None:
    """Redo the bundle's provenance subjects and SHA256SUMS over its files as they are now (what someone who swapped the
    weights would do so that `verify` passes)."""
    from geno_pipeline.checksums import SumsEntry, format_sha256sums, parse_sha256sums, sha256_file

    names = [e.name for e in parse_sha256sums((bundle / "SHA256SUMS").read_text())[0]]
    provenance = json.loads((bundle / "provenance.intoto.json").read_text())
    for subject in provenance["subject"]:
        subject["digest"]["sha256"] = sha256_file(bundle / subject["name"])
    (bundle / "provenance.intoto.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    (bundle / "SHA256SUMS").write_text(format_sha256sums([SumsEntry(sha256_file(bundle / n), n) for n in names]))


@pytest.mark.parametrize("change", ["missing", "extra", "reshaped", "retyped"])
def test_release_loader_refuses_weights_that_do_not_fit_the_model(released: Path, tmp_path: Path, change: str) -> None:
    """A bundle that verifies (its sums and provenance redone over other weights) whose model.safetensors lacks a tensor
    of the model, carries one the model does not have, or has one in another shape or dtype is refused by
    load_released_model, naming the tensor; nothing is loaded with a tensor left at its initial value."""
    from geno_pipeline.readers import read_tensors_with_metadata
    from geno_pipeline.tensorfile import serialize_tensors

    bundle = _copy_bundle(released, tmp_path)
    tensors, metadata = read_tensors_with_metadata(bundle / "model.safetensors", error=VerifyError, fix="")
    name = sorted(n for n in tensors if n.startswith("predictor."))[0]
    if change == "missing":
        del tensors[name]
    elif change == "extra":
        name = "predictor.extra.weight"
        tensors[name] = torch.zeros(2)
    elif change == "reshaped":
        tensors[name] = torch.cat([tensors[name].reshape(-1), torch.zeros(1)])
    else:
        tensors[name] = tensors[name].double()
    (bundle / "model.safetensors").write_bytes(serialize_tensors(tensors, metadata))
    _reseal(bundle)
    assert verify_bundle(bundle) == []
    with pytest.raises(VerifyError, match=rf"model\.safetensors: tensor '{re.escape(name)}' "):
        load_released_model(bundle)


@pytest.mark.slow
def test_release_gate_params_changed_since_training(released: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        write_params(root, train={"lr": 0.004})
        assert cli(root, "preflight").returncode == 0

    _gate(released, tmp_path, mutate, "params unchanged since training: the runtime/train/collapse params differ")


@pytest.mark.slow
def test_release_gate_non_finite_weights(released: Path, tmp_path: Path) -> None:
    from geno_pipeline.readers import read_tensors
    from geno_pipeline.release.verify import safetensors_metadata
    from geno_pipeline.tensorfile import serialize_tensors

    def mutate(root: Path) -> None:
        path = root / "artifacts" / "train" / "model.safetensors"
        tensors = read_tensors(path, error=VerifyError, fix="")
        name = sorted(n for n, t in tensors.items() if t.is_floating_point())[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")
        path.write_bytes(serialize_tensors(tensors, safetensors_metadata(path)))

    _gate(released, tmp_path, mutate, "no non-finite values: weights")


def test_release_verify_refuses_a_listed_symlink(released: Path, tmp_path: Path) -> None:
    """A symlink named in SHA256SUMS, whose target has the listed bytes, is still refused."""
    bundle = _copy_bundle(released, tmp_path)
    outside = tmp_path / "MODEL_CARD.copy.md"
    outside.write_bytes((bundle / "MODEL_CARD.md").read_bytes())
    (bundle / "MODEL_CARD.md").unlink()
    (bundle / "MODEL_CARD.md").symlink_to(outside)
    problems = verify_bundle(bundle)
    assert any("MODEL_CARD.md" in p and "symlink" in p for p in problems), problems
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "verify", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 7


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.bool]


@settings(max_examples=60)
@example(dtype=torch.bfloat16, finite=[3e38, -1e-40], special=None, at=0)  # the largest exponents that are still finite
@example(dtype=torch.bfloat16, finite=[1.5], special=float("nan"), at=1)
@example(dtype=torch.float16, finite=[65504.0], special=None, at=0)
@example(dtype=torch.float32, finite=[3e38], special=float("-inf"), at=0)
@given(
    dtype=st.sampled_from(_DTYPES),
    finite=st.lists(st.sampled_from([0.0, -0.0, 1.5, -2.25, 1e-30, 1e-40, 65504.0, 3e38, -3.3e38]), max_size=12),
    special=st.sampled_from([None, float("inf"), float("-inf"), float("nan")]),
    at=st.integers(0, 12),
)
def test_release_reads_stored_tensors_as_torch_would_and_finds_every_non_finite_value(
    dtype: torch.dtype, finite: list[float], special: float | None, at: int
) -> None:
    """The release reads the trained weights without torch (`read_tensor_bytes`): the same bytes `tensor_bytes` gives
    from the tensors torch reads, written back to the same file, and `all_finite` agrees with torch.isfinite for every
    dtype (bfloat16 included, which numpy has not)."""
    import tempfile

    from geno_pipeline.errors import ReleaseError
    from geno_pipeline.readers import read_tensor_bytes, read_tensors
    from geno_pipeline.tensorfile import all_finite, serialize_tensors, tensor_bytes

    values = finite if special is None else [*finite[:at], special, *finite[at:]]
    tensor = torch.tensor(values, dtype=torch.float64).to(dtype) if dtype.is_floating_point else torch.tensor(values).to(dtype)
    tensors = {"w": tensor.reshape(-1, 1) if values else tensor, "b": torch.arange(3, dtype=torch.int64)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(serialize_tensors(tensors, {"k": "v"}))
        stored = read_tensor_bytes(path, error=ReleaseError, fix="-")
        by_torch = read_tensors(path, error=ReleaseError, fix="-")
    assert stored == {name: tensor_bytes(t) for name, t in by_torch.items()}
    assert serialize_tensors(stored, {"k": "v"}) == serialize_tensors(by_torch, {"k": "v"})
    finite = not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())
    assert all_finite(stored["w"]) is finite and all_finite(stored["b"]) is True


def test_release_never_loads_torch() -> None:
    """The release stage reads and writes the stored weights as bytes: its process never imports torch (about 1 s)."""
    code = "import sys; import geno_pipeline.cli, geno_pipeline.release.stage; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"

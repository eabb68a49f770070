"""The released model's public API: DNA strings and `Edit` records in, latents out (embed, predict, edit_scores), and
examples/use_the_model.py on a tiny release."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from geno_pipeline import Edit, WorldModel
from geno_pipeline.config import ModelParams
from geno_pipeline.data.edits import EDIT_TYPES, EditType, action_features, apply_edit, sample_edit
from geno_pipeline.data.records import dna_codes, edit_actions
from geno_pipeline.training.model import build_world_model
from tests.conftest import REPO

L = 64
TINY = ModelParams(state_dim=16, hidden_dim=32, conv_channels=8, kernel_size=5, segments=4)
MODEL = build_world_model(window_length=L, params=TINY, encoder_seed=1, init_seed=2).eval()


def text(codes: np.ndarray) -> str:
    return "".join("ACGT"[int(b)] for b in codes)


def as_record(rel_position: int, rel_ref_length: int, alt: tuple[int, ...], buffer: np.ndarray) -> Edit:
    return Edit(rel_position, text(buffer[rel_position : rel_position + rel_ref_length]), text(np.asarray(alt, dtype=np.uint8)))


@given(st.lists(st.sampled_from("ACGTacgt"), min_size=L, max_size=L + 8))
def test_dna_codes_reads_either_case_and_keeps_the_first_window(bases: list[str]) -> None:
    window = "".join(bases)
    codes = dna_codes([window], L)
    assert codes.dtype == np.uint8 and codes.shape == (1, L)
    assert text(codes[0]) == window[:L].upper()


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        (["A" * 10 + "N" + "A" * 60], "windows[0]: base 'N' at position 10; the model reads A, C, G and T only"),
        (["A" * 63], "windows[0]: 63 bases, the model reads windows of 64"),
        ("A" * 64, "wrap it in a list"),
        (np.zeros((1, 64), dtype=np.int64), "expected uint8 codes 0..3"),
    ],
)
def test_dna_codes_refuses_what_the_model_cannot_read(windows: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dna_codes(windows, L)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "kind"),
    [(Edit(3, "A", "G"), EditType.SNV), (Edit(3, "AC", "GT"), EditType.MNV), (Edit(3, "", "T"), EditType.INS),
     (Edit(3, "AC", ""), EditType.DEL), (Edit(3, "AC", "T"), EditType.INDEL)],
)  # fmt: skip
def test_edit_kind_follows_the_lengths(edit: Edit, kind: EditType) -> None:
    assert edit.kind is kind


@given(st.integers(0, 2**32 - 1), st.lists(st.sampled_from(EDIT_TYPES), min_size=1, max_size=3))
def test_edit_records_give_the_trainers_action_features(seed: int, kinds: list[EditType]) -> None:
    """Any edits the trainer draws, written as records against the window they apply to, give the same features (the
    trainer also draws INDELs of equal lengths, which a record, typed by its lengths, calls a substitution: skipped)."""
    rng = np.random.default_rng(seed)
    buffer = rng.integers(0, 4, size=L + 32).astype(np.uint8)
    start, records, rels = buffer.copy(), [], []
    for kind in kinds:
        rel = sample_edit(rng, kind, buffer, L)
        records.append(as_record(rel.position, rel.ref_length, rel.alt, buffer))
        assume(records[-1].kind is rel.edit_type)
        rels.append(rel)
        buffer = apply_edit(buffer, rel, capacity=L + 32)
    actions, steps = edit_actions(start[None, :], [records], L)
    assert steps.tolist() == [len(kinds)]
    assert np.array_equal(actions[0], action_features(rels, L))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (Edit(5, "C", "G"), "edits[0][0]: ref 'C' at position 5, but the window has 'A' there"),
        (Edit(5, "A", "A"), "SNV 'A' -> 'A' leaves a base unchanged"),
        (Edit(64, "", "T"), "position 64 with 0 ref base(s) is outside the 64-base window"),
        (Edit(60, "AAAAA", ""), "position 60 with 5 ref base(s) is outside"),
        (Edit(5, "", ""), "ref and alt are both empty"),
        (Edit(5, "", "A" * 11), "at most 10 bases on each side"),
    ],
)
def test_edit_records_are_checked_against_the_window(edit: Edit, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MODEL.predict(["A" * L], [edit])


def test_embed_predict_and_scores_are_the_models_own_computation() -> None:
    rng = np.random.default_rng(3)
    windows = [text(rng.integers(0, 4, size=L)) for _ in range(3)]
    codes = torch.from_numpy(dna_codes(windows, L))
    assert torch.equal(MODEL.embed(windows), MODEL.encoder.encode(codes))
    edits: list[Edit | list[Edit]] = [
        Edit(1, windows[0][1], "ACGT"[("ACGT".index(windows[0][1]) + 1) % 4]),
        [Edit(10, "", "GG"), Edit(20, (windows[1][:10] + "GG" + windows[1][10:])[20:22], "")],  # against the edited window
        Edit(30, windows[2][30:33], "T"),
    ]
    got = MODEL.predict(windows, edits)
    actions, steps = edit_actions(codes.numpy(), edits, L)
    rolled = MODEL.rollout(MODEL.encoder.encode(codes), torch.from_numpy(actions))
    assert steps.tolist() == [1, 2, 1]
    assert torch.equal(got, rolled[torch.arange(3), torch.from_numpy(steps - 1)])
    assert torch.equal(MODEL.edit_scores(windows, edits), torch.linalg.vector_norm(got - MODEL.embed(windows), dim=-1))
    assert MODEL.window_length == L and isinstance(MODEL, WorldModel)
    with pytest.raises(ValueError, match="2 entries for 3 windows"):
        MODEL.predict(windows, edits[:2])


@pytest.mark.slow  # builds a release: the full suite runs it
def test_example_uses_a_released_model(tmp_path: Path) -> None:
    from tests.test_release import cli, write_params

    root = tmp_path / "p"
    root.mkdir()
    write_params(root)
    (root / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    for stage in (("data",), ("preflight",), ("train", "--no-progress"), ("release",)):
        assert cli(root, *stage).returncode == 0
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "use_the_model.py"), "--top", "3"], cwd=root, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "model: artifacts/release: 64-base windows -> 16-dimensional latent states"
    assert lines[2].startswith("predict: over the 192 SNVs, mean |predicted - actual| = ")
    assert lines[3] == "edit_scores: 192 SNVs scored; the 3 with the largest predicted effect:" and len(lines) == 8

"""params.yaml models: every problem listed with key, value and fix; YAML round-trips; shipped file valid."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geno_pipeline.config import (
    CollapseParams,
    DataParams,
    ModelParams,
    Params,
    PreflightParams,
    ReleaseParams,
    RuntimeParams,
    SweepParams,
    SweepStageParams,
    TrainParams,
    TrainStageParams,
    load_params,
    params_from_mapping,
)
from geno_pipeline.errors import ConfigError
from tests.conftest import TINY, write_params

TINY_TEXT = TINY.read_text()

REPO = Path(__file__).resolve().parent.parent


def test_config_shipped_params_validate() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.train.edit_type_weights == {"SNV": 0.40, "INS": 0.20, "DEL": 0.20, "MNV": 0.10, "INDEL": 0.10}
    assert params.train.rollout_step_mix == {1: 0.90, 2: 0.05, 3: 0.05}
    assert params == Params()  # the shipped file spells out the defaults


def test_config_tiny_profile_validates() -> None:
    load_params(REPO / "tests" / "params_tiny.yaml")


def _problems(raw: dict) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        params_from_mapping(raw)
    return info.value.problems


def test_config_lists_every_problem_at_once() -> None:
    problems = _problems(
        {
            "data": {"window_length": -3, "colour": "red"},
            "train": {"lr": "fast", "edit_type_weights": {"SNV": 0.0, "XYZ": 1.0}},
            "runtime": {"device": "tpu"},
        }
    )
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    for needle in ("data.window_length = -3", "data.colour: unknown key", "runtime.device = 'tpu'", "train.lr = 'fast'"):
        assert needle in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"bogus": 1}}, r"^data\.bogus: unknown key; fix: remove the key or fix its spelling$"),
        ({"train": {"steps": "many"}}, r"^train\.steps = 'many': Input should be a valid integer; fix: use an integer$"),
        ({"train": {"steps": True}}, r"^train\.steps = True: Input should be a valid integer; fix: use an integer$"),
        ({"data": {"window_length": -5}}, r"^data\.window_length = -5: Input should be greater than 0; fix: use a larger value$"),
        (
            {"data": {"window_length": 900_000, "genome_length": 800_000}},
            r"^data\.window_length = 900000: is larger than genome_length \(800000\); fix: .*$",
        ),
        (
            {"train": {"edit_type_weights": {"SNV": -1.0}}},
            r"^train\.edit_type_weights\.SNV = -1\.0: weight must be a finite number > 0; fix: .*$",
        ),
        (
            {"train": {"edit_type_weights": {"SNV": math.nan}}},
            r"^train\.edit_type_weights\.SNV = nan: weight must be a finite number > 0; fix: .*$",
        ),
        (
            {"train": {"edit_type_weights": {"FOO": 1.0}}},
            r"^train\.edit_type_weights\.FOO = 1\.0: unknown entry 'FOO'; fix: use one of SNV, INS, DEL, MNV, INDEL$",
        ),
        ({"train": {"rollout_step_mix": {0: 1.0}}}, r"^train\.rollout_step_mix\.0 = 0: rollout length K must be >= 1; fix: .*$"),
        ({"train": {"warmup_steps": 1500}}, r"^train\.warmup_steps = 1500: must be < steps \(1500\) for the wsd schedule; fix: .*$"),
        ({"data": {"source": "fasta"}}, r"^data\.fasta_path = None: is required when source is 'fasta'; fix: .*$"),
        ({"train": {"lr": math.inf}}, r"^train\.lr = inf: is not a finite number; fix: use a finite number \(not \.nan or \.inf\)$"),
        ({"train": {"lr": math.nan}}, r"^train\.lr = nan: is not a finite number; fix: use a finite number \(not \.nan or \.inf\)$"),
        (
            {"train": {"lr": "3e-3"}},
            r"^train\.lr = '3e-3': .*; fix: YAML reads '3e-3' as text; write 0\.003 or 3\.0e-3$",
        ),
        ({"train": {"steps": "1e3"}}, r"^train\.steps = '1e3': .*; fix: YAML reads '1e3' as text; write the integer 1000$"),
        ({"train": {"steps": "1e-3"}}, r"^train\.steps = '1e-3': Input should be a valid integer; fix: use an integer$"),
        ({"data": {"records": "chr1"}}, r"^data\.records = 'chr1': Input should be a valid list; fix: correct the value$"),
        ({"train": {"lr": "6.0e1"}}, r"^train\.lr = '6\.0e1': .*; fix: YAML reads '6\.0e1' as text; write 60 or 6\.0e\+1$"),
        ({"train": {"lr": "3e+3"}}, r"^train\.lr = '3e\+3': .*; fix: YAML reads '3e\+3' as text; write 3000 or 3\.0e\+3$"),
        ({"train": {"lr": "2.5E-2"}}, r"^train\.lr = '2\.5E-2': .*; fix: YAML reads '2\.5E-2' as text; write 0\.025 or 2\.5e-2$"),
        (
            {"train": {"schedule": "linear"}},
            r"^train\.schedule = 'linear': Input should be 'wsd', 'cosine' or 'constant'; fix: use one of the allowed values$",
        ),
    ],
)
def test_config_single_problem_messages(raw: dict, expected: str) -> None:
    problems = _problems(raw)
    assert len(problems) == 1, problems
    assert re.match(expected, problems[0]), problems[0]


def test_config_load_params_names_the_file(tmp_path: Path) -> None:
    path = write_params(tmp_path, data={"window_length": -1})
    with pytest.raises(ConfigError, match=rf"^{path}: 1 problem:\n  - data\.window_length = -1"):
        load_params(path)
    path.write_text("data: {window_length: 32}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: 6 missing section\(s\):\n  - runtime: missing section"):
        load_params(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="empty params file"):
        load_params(path)
    path.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(path)


@given(st.data())
@settings(max_examples=40)
def test_config_every_missing_key_is_named_never_defaulted(data: st.DataObject) -> None:
    """Drop any set of keys (nested ones included) from a complete file: each is named with its default; a section
    dropped whole is named once, its keys not listed."""
    import tempfile

    raw = yaml.safe_load(TINY_TEXT)
    keys = [(s, k) for s, section in raw.items() for k in section] + [("train", "model." + k) for k in raw["train"]["model"]]
    dropped = data.draw(st.sets(st.sampled_from(keys), max_size=6))
    for section, key in dropped:
        owner = raw[section].get("model", {}) if key.startswith("model.") else raw[section]  # the whole model may be gone
        owner.pop(key.removeprefix("model."), None)
    whole_model = ("train", "model") in dropped
    want = sorted(f"{s}.{k}" for s, k in dropped if not (whole_model and k.startswith("model.")))
    try:  # the defaults of the dropped keys must themselves fit the rest (else that problem is named first)
        params_from_mapping(raw)
    except ConfigError:
        assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        if not want:
            load_params(path)
            return
        with pytest.raises(ConfigError) as caught:
            load_params(path)
    named = sorted(p.split(":")[0] for p in caught.value.problems)
    assert named == want, str(caught.value)
    assert all("missing; fix: add the" in p for p in caught.value.problems)


def test_config_missing_key_message_gives_the_default(tmp_path: Path) -> None:
    raw = yaml.safe_load(TINY_TEXT)
    del raw["train"]["lr"], raw["train"]["model"]["hidden_dim"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == (
        f"{path}: 2 missing key(s); every stage reads its keys from the file:\n"
        "  - train.lr: missing; fix: add the key (its default is 0.001)\n"
        "  - train.model.hidden_dim: missing; fix: add the key (its default is 256)"
    )
    del raw["train"]["model"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train\.model: missing; fix: add the `model:` mapping with its keys"):
        load_params(path)


def test_config_models_are_frozen_and_forbid_extra() -> None:
    for model in (DataParams, RuntimeParams, PreflightParams, TrainParams, ModelParams, CollapseParams, ReleaseParams, Params):
        assert model.model_config["extra"] == "forbid" and model.model_config["frozen"] is True
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no docstring"


positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def params_strategy(draw: st.DrawFn) -> Params:
    steps = draw(st.integers(2, 10_000))
    edit_names = draw(st.lists(st.sampled_from(["SNV", "INS", "DEL", "MNV", "INDEL"]), min_size=1, unique=True))
    ks = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True))
    window = 16 * draw(st.integers(1, 32))  # segments (16) must divide the window
    return Params(
        data=DataParams(
            seed=draw(st.integers(0, 2**31)),
            window_length=window,
            flank_length=draw(st.integers(10 * max(ks), 64)),  # each of K edits may delete up to 10 bases
            train_windows=draw(st.integers(1, 100)),
            valid_windows=draw(st.integers(1, 100)),
            genome_length=10_000_000,
        ),
        runtime=RuntimeParams(
            device=draw(st.sampled_from(["auto", "cpu", "cuda", "cuda:1"])),
            deterministic=draw(st.booleans()),
            cpu_threads=draw(st.integers(1, 64)),
        ),
        train=TrainParams(
            steps=steps,
            warmup_steps=draw(st.integers(0, steps - 1)),
            lr=draw(positive),
            schedule=draw(st.sampled_from(["wsd", "cosine", "constant"])),
            edit_type_weights={n: draw(positive) for n in edit_names},
            rollout_step_mix={k: draw(positive) for k in ks},
        ),
        collapse=CollapseParams(log_every_steps=draw(st.integers(1, 1000)), on_alert=draw(st.sampled_from(["warn", "halt"]))),
    )


@settings(max_examples=200, deadline=None)
@given(params=params_strategy())
def test_config_yaml_round_trip(params: Params, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("rt") / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="python"), sort_keys=False))
    assert load_params(path) == params


def test_config_sweep_stage_narrows_and_reseeds_the_train_stage() -> None:
    params = Params(
        runtime=RuntimeParams(device="cpu", cpu_threads=3),
        train=TrainParams(seed=11, steps=40, warmup_steps=4),
        collapse=CollapseParams(log_every_steps=7, on_alert="halt"),
        sweep=SweepParams(seeds=3),
    )
    stage = SweepStageParams.from_params(params)
    assert (stage.runtime, stage.train, stage.collapse, stage.sweep) == (params.runtime, params.train, params.collapse, params.sweep)
    same = stage.train_stage()
    assert same == TrainStageParams.from_params(params)
    reseeded = stage.train_stage(seed=12)
    assert reseeded.train.seed == 12 and stage.train.seed == 11
    assert reseeded.train.model_dump(exclude={"seed"}) == params.train.model_dump(exclude={"seed"})
    assert (reseeded.runtime, reseeded.collapse) == (params.runtime, params.collapse)
    assert reseeded.sha256() != same.sha256()
    assert stage.train_stage(seed=0).train.seed == 0  # seed 0 is a seed, not "keep the released one"

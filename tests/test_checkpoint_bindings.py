"""The checkpoint binding checks, as pure functions on hand-built states: each binding, the params diff, the tensor
shapes and the optimizer groups (the resume tests in tests/test_train.py exercise the same through files)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from geno_pipeline.layout import LOG_FILES
from geno_pipeline.training.checkpoint import Bindings, CheckpointState, OptimizerGroupState
from geno_pipeline.training.checkpoint_load import (
    Expected,
    _binding_problems,
    _content_problems,
    params_differences,
    shape_problems,
    tensor_specs,
)

BINDINGS = Bindings(
    params_sha256="p" * 64, dataset_manifest_sha256="d" * 64, package_version="0.1.0", environment_sha256="e" * 64, world_size=1
)
PARAMS: dict[str, Any] = {"train": {"lr": 0.003, "steps": 12}, "collapse": {"n": 64}}
GROUP = OptimizerGroupState(group_name="decay", names=["w"], lr=0.1, initial_lr=0.1, weight_decay=0.05, betas=[0.9, 0.99], eps=1e-8)


def state(*, step: int = 4, steps_total: int = 12, bindings: Bindings = BINDINGS, params: dict[str, Any] | None = None) -> CheckpointState:
    return CheckpointState.model_validate(
        {
            "step": step,
            "steps_total": steps_total,
            "run_id": "run-x",
            "sampler": {"bit_generator": "PCG64", "state": {"state": 1, "inc": 3}, "has_uint32": 0, "uinteger": 0},
            "monitor_baseline_pairwise": None,
            "last_train_loss": None,
            "logs": {name: {"bytes": 0, "sha256": "0" * 64} for name in LOG_FILES},
            "tensors": {},
            "optimizer_groups": [GROUP.model_dump()],
            "bindings": bindings.model_dump(),
            "params": PARAMS if params is None else params,
        }
    )


def expected(*, steps_total: int = 12, **binding: Any) -> Expected:
    return Expected(
        bindings=BINDINGS.model_copy(update=binding),
        steps_total=steps_total,
        run_id="run-x",
        params=PARAMS,
        model={"w": ((2, 3), "float32")},
        groups=[("decay", ["w"])],
        optimizer={"w.exp_avg": ((2, 3), "float32")},
        hyper=[GROUP],
        lr_multiplier=lambda step: 1.0,
    )


def test_matching_checkpoint_has_no_binding_problem() -> None:
    assert _binding_problems(state(), expected()) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("dataset_manifest_sha256", "f" * 64), ("package_version", "9.9.9"), ("environment_sha256", "0" * 64)],
)
def test_each_binding_is_checked_and_named(key: str, value: str) -> None:
    have = getattr(BINDINGS, key)
    assert _binding_problems(state(), expected(**{key: value})) == [f"{key}: checkpoint has {have!r}, this run has {value!r}"]


def test_params_binding_names_each_differing_key() -> None:
    changed = {"train": {"lr": 0.01, "steps": 12}, "collapse": {"n": 64}}
    problems = _binding_problems(state(params=changed), expected(params_sha256="q" * 64))
    assert problems == ["params train.lr: checkpoint has 0.01, this run has 0.003"]


def test_params_binding_with_equal_params_falls_back_to_the_hashes() -> None:
    problems = _binding_problems(state(), expected(params_sha256="q" * 64))
    assert problems == [f"params params_sha256: checkpoint has {'p' * 64}, this run has {'q' * 64}"]


def test_world_size_binding_says_how_to_resume() -> None:
    (problem,) = _binding_problems(state(), expected(world_size=2))
    assert problem.startswith("world_size: checkpoint was written by 1 worker(s), this run has 2")
    assert "set runtime.nproc_per_node: 1" in problem


def test_steps_total_binding() -> None:
    assert _binding_problems(state(steps_total=12), expected(steps_total=20)) == [
        "steps_total: checkpoint has 12, this run has train.steps = 20"
    ]


def test_several_bindings_are_all_reported_in_key_order() -> None:
    problems = _binding_problems(state(), expected(package_version="2", environment_sha256="1" * 64, steps_total=3))
    assert [p.split(":")[0] for p in problems] == ["environment_sha256", "package_version", "steps_total"]


def test_params_differences_reports_absent_and_nested_keys() -> None:
    have = {"a": 1, "b": {"c": 2, "d": 3}}
    want = {"a": 1, "b": {"c": 5}, "e": True}
    assert params_differences(have, want) == [
        "b.c: checkpoint has 2, this run has 5",
        "b.d: checkpoint has 3, this run has '<absent>'",
        "e: checkpoint has '<absent>', this run has True",
    ]
    assert params_differences(3, 4, "x") == ["x: checkpoint has 3, this run has 4"]
    # a Python mapping's keys (rollout lengths are ints) sort beside a JSON document's strings
    assert params_differences({"mix": {1: 0.5, 3: 0.5}}, {"mix": {"2": 0.5}}) == [
        "mix.1: checkpoint has 0.5, this run has '<absent>'",
        "mix.2: checkpoint has '<absent>', this run has 0.5",
        "mix.3: checkpoint has 0.5, this run has '<absent>'",
    ]


@given(st.recursive(st.integers() | st.booleans() | st.text(max_size=3), lambda c: st.dictionaries(st.text(max_size=3), c, max_size=3)))
def test_params_differences_is_empty_exactly_for_equal_values(value: Any) -> None:
    assert params_differences(value, value) == []
    assert params_differences({"k": value}, {"k": [value]}) != []


def test_shape_problems_names_extra_missing_and_changed_tensors() -> None:
    have = {"a": ((2,), "float32"), "b": ((3,), "float32"), "c": ((1,), "float32")}
    want = {"a": ((2,), "float32"), "b": ((3,), "float64"), "d": ((4,), "float32")}
    assert shape_problems("m", have, want) == [
        "m: tensor 'c' is not in this model",
        "m: tensor 'd' of this model is missing",
        "m: tensor 'b' is float32 [3], this model has float64 [3]",
    ]
    assert shape_problems("m", want, want) == []


def test_tensor_specs() -> None:
    assert tensor_specs({"w": torch.zeros(2, 3, dtype=torch.float64)}) == {"w": ((2, 3), "float64")}


@pytest.mark.parametrize(("step", "fits"), [(0, False), (1, True), (12, True), (13, False)])
def test_content_problems_step_range_bounds(step: int, fits: bool) -> None:
    model, optimizer = {"w": torch.zeros(2, 3)}, {"w.exp_avg": torch.zeros(2, 3)}
    problems = _content_problems(state(step=step), expected(), model, optimizer)
    assert problems == ([] if fits else [f"step {step} is outside 1..train.steps (12)"])


def test_content_problems_checks_model_optimizer_and_groups() -> None:
    model, optimizer = {"w": torch.zeros(3, 2)}, {}
    other = state().model_copy(update={"optimizer_groups": [GROUP.model_copy(update={"names": ["v"]})]})
    assert _content_problems(other, expected(), model, optimizer) == [
        "model.safetensors: tensor 'w' is float32 [3, 2], this model has float32 [2, 3]",
        "optimizer.safetensors: tensor 'w.exp_avg' of this model is missing",
        "optimizer groups [('decay', ['v'])] differ from this model's [('decay', ['w'])]",
    ]


def fits(checkpoint: CheckpointState, model: dict[str, torch.Tensor] | None = None, optimizer: dict[str, torch.Tensor] | None = None,
         run: Expected | None = None) -> list[str]:  # fmt: skip
    model = {"w": torch.zeros(2, 3)} if model is None else model
    optimizer = {"w.exp_avg": torch.zeros(2, 3)} if optimizer is None else optimizer
    return _content_problems(checkpoint, run or expected(), model, optimizer)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"initial_lr": 0.5}, "optimizer_groups[decay].initial_lr = 0.5, this run's is 0.1"),
        ({"weight_decay": 0.0}, "optimizer_groups[decay].weight_decay = 0.0, this run's is 0.05"),
        ({"betas": [0.9, 0.999]}, "optimizer_groups[decay].betas = [0.9, 0.999], this run's is [0.9, 0.99]"),
        ({"eps": 1e-6}, "optimizer_groups[decay].eps = 1e-06, this run's is 1e-08"),
        ({"lr": 0.05}, "optimizer_groups[decay].lr = 0.05, the schedule's at step 4 is 0.1"),
    ],
)
def test_each_optimizer_hyper_parameter_is_checked_against_the_run(change: dict[str, Any], problem: str) -> None:
    tampered = state().model_copy(update={"optimizer_groups": [GROUP.model_copy(update=change)]})
    assert fits(tampered) == [f"state.json {problem}" + (" (from train.lr / train.weight_decay)" if "this run's" in problem else "")]


def test_lr_is_the_schedule_at_the_checkpoint_step() -> None:
    run = expected()
    halfway = Expected(**{**run.__dict__, "lr_multiplier": lambda step: 0.5 if step == 4 else 1.0})
    assert fits(state(), run=halfway) == ["state.json optimizer_groups[decay].lr = 0.1, the schedule's at step 4 is 0.05"]
    at_half = state().model_copy(update={"optimizer_groups": [GROUP.model_copy(update={"lr": 0.05})]})
    assert fits(at_half, run=halfway) == []


@pytest.mark.parametrize(
    ("update", "problem"),
    [
        ({"monitor_baseline_pairwise": float("nan")}, "monitor_baseline_pairwise = nan; it is a finite distance > 0"),
        ({"monitor_baseline_pairwise": 0.0}, "monitor_baseline_pairwise = 0.0; it is a finite distance > 0"),
        ({"last_train_loss": float("inf")}, "last_train_loss = inf; a checkpoint holds only finite steps"),
        ({"logs": {}}, "logs name [], expected ['collapse.jsonl', 'metrics.jsonl', 'train.log']"),
    ],
)
def test_state_fields_no_run_writes_are_refused(update: dict[str, Any], problem: str) -> None:
    assert fits(state().model_copy(update=update)) == [f"state.json {problem}"]


def test_an_even_sampler_increment_is_refused() -> None:
    checkpoint = state()
    sampler = checkpoint.sampler.model_copy(update={"state": checkpoint.sampler.state.model_copy(update={"inc": 4})})
    assert fits(checkpoint.model_copy(update={"sampler": sampler})) == ["state.json sampler.state.inc is even; a PCG64 increment is odd"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("state", -1), ("state", 1 << 128), ("inc", 1 << 129), ("has_uint32", 2), ("uinteger", 1 << 32), ("uinteger", -1)],
)
def test_sampler_integers_out_of_range_fail_validation(field: str, value: int) -> None:
    document = state().model_dump(mode="json")
    target = document["sampler"]["state"] if field in ("state", "inc") else document["sampler"]
    target[field] = value
    with pytest.raises(ValueError, match=field):
        CheckpointState.model_validate(document)


@pytest.mark.parametrize(
    ("model", "optimizer", "problem"),
    [
        ({"w": torch.full((2, 3), float("nan"))}, None, "model.safetensors: tensor 'w' holds non-finite values"),
        (None, {"w.exp_avg": torch.full((2, 3), float("-inf"))}, "optimizer.safetensors: tensor 'w.exp_avg' holds non-finite values"),
    ],
)
def test_non_finite_tensors_are_refused(model: Any, optimizer: Any, problem: str) -> None:
    assert fits(state(), model, optimizer) == [problem]


def test_negative_second_moments_and_wrong_step_counts_are_refused() -> None:
    run = expected()
    run = Expected(**{**run.__dict__, "optimizer": {"w.exp_avg_sq": ((2, 3), "float32"), "w.step": ((), "float32")}})
    good = {"w.exp_avg_sq": torch.zeros(2, 3), "w.step": torch.tensor(4.0)}
    assert fits(state(), optimizer=good, run=run) == []
    bad = {"w.exp_avg_sq": torch.full((2, 3), -1.0), "w.step": torch.tensor(3.0)}
    assert fits(state(), optimizer=bad, run=run) == [
        "optimizer.safetensors: tensor 'w.exp_avg_sq' holds negative second moments",
        "optimizer.safetensors: tensor 'w.step' counts 3 steps, the state says step 4",
    ]

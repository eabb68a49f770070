"""The training math against values worked out by hand: losses, the KL, decay groups, clipping, masks, edits, encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geno_pipeline.config import ModelParams, TrainParams
from geno_pipeline.data.edits import ACTION_FEATURES, MAX_EDIT_BASES, EditType, RelEdit, apply_edit, sample_edit
from geno_pipeline.training.model import FrozenConvEncoder, build_world_model
from geno_pipeline.training.sampling import DEFAULT_EDIT_TYPE_WEIGHTS, rollout_mix_from_mapping
from geno_pipeline.training.trainer import (
    TorchTrainer,
    TorchTrainerBatch,
    build_adamw_optimizer,
    gaussian_kl,
    make_action_mask,
    masked_prediction_loss,
)
from geno_pipeline.training.tuples import draw_tuples


def test_masked_prediction_loss_by_hand_with_variable_k() -> None:
    # example 0 has K = 2, example 1 has K = 1: its second step is padding and holds a huge error
    prediction = torch.tensor([[[1.0, 1.0], [2.0, 0.0]], [[0.0, 3.0], [10.0, 10.0]]])
    target = torch.zeros(2, 2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    # per-step mean squared error over the 2 dims: 1, 2, 4.5 (and 100, masked); mean over the 3 real steps
    assert masked_prediction_loss(prediction, target, mask).item() == pytest.approx((1 + 2 + 4.5) / 3)
    everything = torch.ones(2, 2, dtype=torch.bool)
    assert masked_prediction_loss(prediction, target, everything).item() == pytest.approx((1 + 2 + 4.5 + 100) / 4)
    assert masked_prediction_loss(prediction, target, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0


def test_gaussian_kl_by_hand() -> None:
    # one dim; real predictions 1 and 3 (mean 2, population variance 1); a masked 100 must not count
    prediction = torch.tensor([[[1.0], [100.0]], [[3.0], [100.0]]])
    mask = torch.tensor([[True, False], [True, False]])
    eps = 1e-6
    expected = 0.5 * ((1 + eps) + 2.0**2 - 1.0 - math.log(1 + eps))
    assert gaussian_kl(prediction, mask, eps=eps).item() == pytest.approx(expected, rel=1e-6)
    # a standard normal sample's statistics give a KL near 0; two dims are averaged
    two = torch.tensor([[[1.0, -1.0]], [[-1.0, 1.0]]])
    assert gaussian_kl(two, torch.ones(2, 1, dtype=torch.bool), eps=0.0).item() == pytest.approx(0.0, abs=1e-7)


def test_make_action_mask_is_a_prefix_of_each_examples_length() -> None:
    snv = RelEdit(EditType.SNV, 0, 1, (1,))
    mask = make_action_mask([[snv], [snv, snv, snv], [snv, snv]])
    assert mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=1, max_value=40))
def test_draw_tuples_masks_count_exactly_the_rollout_steps(seed: int, n: int) -> None:
    windows = np.random.default_rng(1).integers(0, 4, (50, 64 + 32), dtype=np.uint8)
    mix = rollout_mix_from_mapping({1: 0.5, 2: 0.25, 3: 0.25})
    batch = draw_tuples(np.random.default_rng(seed), windows, n, window_length=64, weights=DEFAULT_EDIT_TYPE_WEIGHTS, mix=mix, split="t")
    k_max = batch.targets.shape[1]
    assert k_max == int(batch.rollout_steps.max())
    assert batch.mask.sum(axis=1).tolist() == batch.rollout_steps.tolist()  # no padding step counted, none missing
    assert (batch.mask == (np.arange(k_max)[None, :] < batch.rollout_steps[:, None])).all()
    for b in range(n):
        k = int(batch.rollout_steps[b])
        assert len(batch.rel_edits[b]) == k
        assert (batch.actions[b, k:] == 0).all() and (batch.actions[b, :k].any(axis=1)).all()
        assert (batch.targets[b, k:] == batch.targets[b, k - 1]).all()  # padding repeats the last real target


def test_adamw_decays_matrices_only() -> None:
    train = TrainParams(weight_decay=0.05)
    model = build_world_model(window_length=64, params=ModelParams(state_dim=8, hidden_dim=16, conv_channels=4, kernel_size=3, segments=4),
                              encoder_seed=1, init_seed=2)  # fmt: skip
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    groups = {g["group_name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["names"] == [
        "action_encoder.net.0.weight", "action_encoder.net.2.weight",
        "predictor.net.0.weight", "predictor.net.3.weight", "predictor.net.5.weight",
    ]  # fmt: skip
    assert groups["no_decay"]["names"] == [
        "action_encoder.net.0.bias",
        "action_encoder.net.2.bias",
        "predictor.net.0.bias",
        "predictor.net.1.weight",
        "predictor.net.1.bias",
        "predictor.net.3.bias",
        "predictor.net.5.bias",
    ]  # fmt: skip  (predictor.net.1 is the LayerNorm)
    trainable = [f"action_encoder.{n}" for n, _ in model.action_encoder.named_parameters()]
    trainable += [f"predictor.{n}" for n, _ in model.predictor.named_parameters()]
    assert sorted(trainable) == sorted(groups["decay"]["names"] + groups["no_decay"]["names"])
    assert len(trainable) == len(groups["decay"]["names"]) + len(groups["no_decay"]["names"])


def _one_step(clip: float) -> tuple[float, float]:
    """(reported gradient norm before clipping, norm of the gradient the optimizer applied) for one step."""
    params = ModelParams(state_dim=8, hidden_dim=16, conv_channels=4, kernel_size=3, segments=4)
    model = build_world_model(window_length=16, params=params, encoder_seed=1, init_seed=2)
    train = TrainParams(steps=10, warmup_steps=1, grad_clip_norm=clip, model=params)
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    trainer = TorchTrainer(predictor=model.predictor, action_encoder=model.action_encoder, optimizer=opt, config=train, total_steps=10)
    gen = torch.Generator().manual_seed(0)
    batch = TorchTrainerBatch(
        state=torch.randn(6, 8, generator=gen), target=5 * torch.randn(6, 2, 8, generator=gen),
        actions=torch.randn(6, 2, ACTION_FEATURES, generator=gen),
        action_mask=torch.tensor([[True, True]] * 3 + [[True, False]] * 3), rel_edits=((),) * 6, window_ids=("w",) * 6,
    )  # fmt: skip
    result = trainer.train_step(batch, step=1)
    applied = torch.sqrt(sum((p.grad.double() ** 2).sum() for g in opt.param_groups for p in g["params"]))
    return result.grad_norm, float(applied)


def test_gradient_clipping_binds_and_scales_to_the_clip() -> None:
    raw, applied = _one_step(clip=1e-3)
    assert raw > 1e-3 * 10  # the clip binds
    assert applied == pytest.approx(1e-3, rel=1e-4)  # the optimizer saw the clipped gradient
    raw_free, applied_free = _one_step(clip=1e9)
    assert raw_free == pytest.approx(raw, rel=1e-6) and applied_free == pytest.approx(raw, rel=1e-4)


def _buffer() -> np.ndarray:
    return np.array([0, 1, 2, 3, 0, 1, 2, 3, 1, 1, 2, 2], dtype=np.uint8)  # window 8 + flank 4


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (RelEdit(EditType.SNV, 0, 1, (3,)), [3, 1, 2, 3, 0, 1, 2, 3, 1, 1, 2, 2]),
        (RelEdit(EditType.SNV, 7, 1, (0,)), [0, 1, 2, 3, 0, 1, 2, 0, 1, 1, 2, 2]),
        (RelEdit(EditType.MNV, 6, 2, (0, 0)), [0, 1, 2, 3, 0, 1, 0, 0, 1, 1, 2, 2]),
        (RelEdit(EditType.INS, 0, 0, (2, 2)), [2, 2, 0, 1, 2, 3, 0, 1, 2, 3, 1, 1]),  # right end truncated to capacity
        (RelEdit(EditType.INS, 7, 0, (0,)), [0, 1, 2, 3, 0, 1, 2, 0, 3, 1, 1, 2]),
        (RelEdit(EditType.DEL, 0, 3, ()), [3, 0, 1, 2, 3, 1, 1, 2, 2]),  # the flank slides in
        (RelEdit(EditType.DEL, 6, 2, ()), [0, 1, 2, 3, 0, 1, 1, 1, 2, 2]),
        (RelEdit(EditType.INDEL, 7, 1, (2, 2, 2)), [0, 1, 2, 3, 0, 1, 2, 2, 2, 2, 1, 1]),
    ],
)
def test_apply_edit_at_window_edges(edit: RelEdit, expected: list[int]) -> None:
    assert apply_edit(_buffer(), edit, capacity=12).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(list(EditType)), st.integers(min_value=MAX_EDIT_BASES, max_value=40))
def test_sample_edit_stays_inside_the_window(seed: int, kind: EditType, window: int) -> None:
    rng = np.random.default_rng(seed)
    buffer = rng.integers(0, 4, window + 2 * MAX_EDIT_BASES, dtype=np.uint8)
    edit = sample_edit(rng, kind, buffer, window)
    assert edit.edit_type is kind
    assert edit.position >= 0 and edit.position + edit.ref_length <= window
    assert all(0 <= b <= 3 for b in edit.alt)
    if kind is EditType.SNV:
        assert edit.ref_length == 1 and len(edit.alt) == 1 and edit.alt[0] != buffer[edit.position]
    elif kind is EditType.MNV:
        assert 2 <= edit.ref_length <= 3 and len(edit.alt) == edit.ref_length
        assert all(a != r for a, r in zip(edit.alt, buffer[edit.position : edit.position + edit.ref_length], strict=True))
    elif kind is EditType.INS:
        assert edit.ref_length == 0 and 1 <= len(edit.alt) <= MAX_EDIT_BASES
    elif kind is EditType.DEL:
        assert 1 <= edit.ref_length <= MAX_EDIT_BASES and edit.alt == ()
    else:
        assert 1 <= edit.ref_length <= MAX_EDIT_BASES and 1 <= len(edit.alt) <= MAX_EDIT_BASES


def test_encoder_shape_and_position_sensitivity() -> None:
    params = ModelParams(state_dim=8, hidden_dim=16, conv_channels=4, kernel_size=3, segments=4)
    enc = FrozenConvEncoder(window_length=32, params=params, seed=3)
    codes = torch.from_numpy(np.random.default_rng(0).integers(0, 4, (5, 32), dtype=np.uint8))
    states = enc.encode(codes)
    assert states.shape == (5, 8) and states.dtype == torch.float32
    assert torch.equal(enc.encode(codes), states)  # frozen and deterministic
    changed = codes.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 4  # segment 0
    moved = codes.clone()
    moved[0, 30] = (moved[0, 30] + 1) % 4  # segment 3
    a, b = enc.encode(changed)[0], enc.encode(moved)[0]
    assert not torch.equal(a, states[0]) and not torch.equal(b, states[0]) and not torch.equal(a, b)
    assert torch.equal(enc.encode(changed)[1:], states[1:])  # rows are independent
    other = FrozenConvEncoder(window_length=32, params=params, seed=4)
    assert not torch.equal(other.encode(codes), states)


def test_draw_tuples_stream_is_pinned() -> None:
    """The sampler's random stream is part of every output (the reference run's checkpoints and release): a change to
    how tuples are drawn must show here first. Re-pin only with a deliberate regeneration of the reference run."""
    import hashlib

    windows = np.random.default_rng(11).integers(0, 4, (40, 64 + 32), dtype=np.uint8)
    mix = rollout_mix_from_mapping({1: 0.5, 2: 0.25, 3: 0.25})
    rng = np.random.default_rng(5)
    batch = draw_tuples(rng, windows, 16, window_length=64, weights=DEFAULT_EDIT_TYPE_WEIGHTS, mix=mix, split="t")
    edits = repr(batch.rel_edits).encode()  # the actions follow from the edits (tested by hand); their sines are libm's
    digest = hashlib.sha256(batch.sources.tobytes() + batch.targets.tobytes() + edits).hexdigest()
    assert batch.rollout_steps.tolist() == [1, 3, 2, 1, 1, 3, 3, 3, 1, 1, 2, 1, 2, 1, 3, 1]
    assert digest == "ec4de525c2b31c20f22f918a7c60c01f54bc32d49cfe130f2cd25dc1321059cf"


@settings(max_examples=20, deadline=None)
@given(eval_mask=st.lists(st.booleans(), min_size=1, max_size=40))
def test_train_step_puts_every_module_in_training_mode(eval_mask: list[bool]) -> None:
    """Whichever modules were left in eval mode (the held-out evaluation leaves the whole model so; anything may set one
    submodule), a train step runs with every trainable module in training mode, and leaves them so."""
    params = ModelParams(state_dim=8, hidden_dim=16, conv_channels=4, kernel_size=3, segments=4)
    model = build_world_model(window_length=16, params=params, encoder_seed=1, init_seed=2)
    train = TrainParams(steps=10, warmup_steps=1, model=params)
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    trainer = TorchTrainer(predictor=model.predictor, action_encoder=model.action_encoder, optimizer=opt, config=train, total_steps=10)
    modules = [*model.predictor.modules(), *model.action_encoder.modules()]
    for module, off in zip(modules, eval_mask * len(modules), strict=False):
        if off:
            module.training = False
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append(m.training)) for m in modules]
    gen = torch.Generator().manual_seed(0)
    batch = TorchTrainerBatch(
        state=torch.randn(4, 8, generator=gen), target=torch.randn(4, 2, 8, generator=gen),
        actions=torch.randn(4, 2, ACTION_FEATURES, generator=gen), action_mask=torch.ones(4, 2, dtype=torch.bool),
        rel_edits=((),) * 4, window_ids=("w",) * 4,
    )  # fmt: skip
    trainer.train_step(batch, step=1)
    for hook in hooks:
        hook.remove()
    assert seen and all(seen)
    assert all(m.training for m in modules)


@settings(max_examples=30)
@given(
    shapes=st.lists(st.sampled_from([(3,), (4, 5), (2, 3, 2), (1,)]), min_size=1, max_size=3),
    weight_decay=st.sampled_from([0.0, 0.01, 0.1]),
    lrs=st.lists(st.floats(1e-5, 3e-2), min_size=1, max_size=6),
    betas=st.sampled_from([(0.9, 0.999), (0.8, 0.95)]),
    skipped=st.integers(-1, 2),
    seed=st.integers(0, 2**16),
)
def test_adamw_is_torchs_single_tensor_adamw_bit_for_bit(
    shapes: list[tuple[int, ...]], weight_decay: float, lrs: list[float], betas: tuple[float, float], skipped: int, seed: int
) -> None:
    """geno_pipeline's AdamW against torch.optim.AdamW(foreach=False): the same weights and the same state (names, order,
    dtypes, bytes) after every step, with decayed and undecayed groups, an lr changed between steps as the schedule
    does, and a parameter without a gradient (skipped) on some steps."""
    from geno_pipeline.training.adamw import AdamW

    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(s, generator=gen) for s in shapes]
    ours_params = [torch.nn.Parameter(t.clone()) for t in start]
    torch_params = [torch.nn.Parameter(t.clone()) for t in start]

    def groups(params: list[torch.nn.Parameter]) -> list[dict[str, object]]:
        return [
            {"params": params[::2], "weight_decay": weight_decay, "group_name": "decay"},
            *([{"params": params[1::2], "weight_decay": 0.0, "group_name": "no_decay"}] if params[1::2] else []),
        ]

    ours = AdamW(groups(ours_params), lr=lrs[0], betas=betas, eps=1e-8)
    reference = torch.optim.AdamW(groups(torch_params), lr=lrs[0], betas=betas, eps=1e-8, foreach=False)
    for step, lr in enumerate(lrs):
        for optimizer in (ours, reference):
            optimizer.zero_grad()
            for group in optimizer.param_groups:
                group["lr"] = lr
        grads = [torch.randn(s, generator=gen) * 10 ** (step % 3 - 1) for s in shapes]
        for i, grad in enumerate(grads):
            if i != skipped or step % 2 == 0:
                ours_params[i].grad = grad.clone()
                torch_params[i].grad = grad.clone()
        ours.step()
        reference.step()
        for a, b in zip(ours_params, torch_params, strict=True):
            assert a.detach().numpy().tobytes() == b.detach().numpy().tobytes()
        assert [(id_of(ours_params, p), list(s)) for p, s in ours.state.items()] == [
            (id_of(torch_params, p), list(s)) for p, s in reference.state.items()
        ]  # the same parameters hold state, in the same order, with the same slots in the same order
        for sa, sb in zip(ours.state.values(), reference.state.values(), strict=True):
            for key in sa:
                assert sa[key].dtype == sb[key].dtype and sa[key].device == sb[key].device
                assert sa[key].numpy().tobytes() == sb[key].numpy().tobytes(), key
    for ga, gb in zip(ours.param_groups, reference.param_groups, strict=True):
        for key in ("lr", "betas", "eps", "weight_decay", "group_name"):
            assert ga[key] == gb[key], key


def id_of(params: list[torch.nn.Parameter], param: torch.Tensor) -> int:
    """The index of `param` in `params` (by identity)."""
    return next(i for i, p in enumerate(params) if p is param)


def test_a_training_process_never_imports_the_compiler() -> None:
    """A train step (optimizer built, stepped, its state read) loads no torch._dynamo: torch.optim's optimizers would,
    at about 1.4 s of every training process's start."""
    import subprocess
    import sys

    code = """
import sys
import torch
from geno_pipeline.config import ModelParams, TrainParams
from geno_pipeline.training.model import build_world_model
from geno_pipeline.training.trainer import build_adamw_optimizer
params = ModelParams(state_dim=8, hidden_dim=16, conv_channels=4, kernel_size=3, segments=4)
model = build_world_model(window_length=64, params=params, encoder_seed=1, init_seed=2)
opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=TrainParams(weight_decay=0.05))
for group in opt.param_groups:
    for p in group["params"]:
        p.grad = torch.ones_like(p)
torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
opt.step()
opt.zero_grad()
print(len(opt.state), "torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split()[1] == "False", done.stdout

"""The fixed held-out batch: drawn once from the valid windows, encoded once, evaluated at each observation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geno_pipeline.config import CollapseParams, TrainParams
from geno_pipeline.data.dataset import Dataset
from geno_pipeline.training.budget import SOURCE_CACHE_MAX_BYTES, caches_source_states
from geno_pipeline.training.model import WorldModel
from geno_pipeline.training.sampling import edit_type_weights_from_mapping, rollout_mix_from_mapping
from geno_pipeline.training.seeds import TrainerSeeds
from geno_pipeline.training.trainer import TorchTrainerBatch, gaussian_kl, masked_prediction_loss
from geno_pipeline.training.tuples import TupleBatch, draw_tuples

__all__ = [
    "SOURCE_CACHE_CHUNK",
    "SOURCE_CACHE_MAX_BYTES",
    "Evaluation",
    "HeldOut",
    "build_held_out",
    "caches_source_states",
    "encode_batch",
    "encode_windows",
    "evaluate",
    "padded_target_rows",
]

SOURCE_CACHE_CHUNK = 64
"""Rows per encoder call when every training window is encoded once: fixed, so each state's bits depend only on its
window and its place in the windows array, never on which batch drew it."""


@dataclass(frozen=True)
class HeldOut:
    """The fixed held-out batch, encoded once."""

    state: torch.Tensor
    target: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    last_index: torch.Tensor  # [N] index of each example's last real rollout step
    identity_loss: float  # held-out loss of predicting "no change"


@dataclass(frozen=True)
class Evaluation:
    """The model on the held-out batch."""

    loss: float  # masked prediction loss over every rollout step
    prediction: torch.Tensor  # [N, D] predictions at each example's last real step
    target: torch.Tensor  # [N, D] their targets
    kl_reg: float  # Gaussian KL regulariser of the predictions


def padded_target_rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(real, gather) for a [B, K_max] rollout mask: the flat indices of the real target windows, and for every (b, k)
    the position in `real` of the window to use, its own when real, else its example's last real one (padding repeats
    the last real target, as in `TupleBatch`). Every example has at least one real step."""
    b, k = mask.shape
    flat = mask.reshape(-1)
    real = np.flatnonzero(flat)
    position = np.full(b * k, -1, dtype=np.int64)
    position[real] = np.arange(real.size)
    last = np.arange(b) * k + mask.sum(axis=1) - 1
    use = np.where(mask, np.arange(b * k).reshape(b, k), last[:, None]).reshape(-1)
    return real, position[use]


def encode_windows(model: WorldModel, windows: np.ndarray, window_length: int, device: str) -> torch.Tensor:
    """The states [W, D] of every window's first `window_length` bases, encoded `SOURCE_CACHE_CHUNK` rows at a time."""
    states = [
        model.encoder.encode(torch.from_numpy(np.ascontiguousarray(windows[i : i + SOURCE_CACHE_CHUNK, :window_length])).to(device))
        for i in range(0, windows.shape[0], SOURCE_CACHE_CHUNK)
    ]
    return torch.cat(states)


def encode_batch(
    model: WorldModel, batch: TupleBatch, device: str, *, reuse_padding: bool = True, source_states: torch.Tensor | None = None
) -> TorchTrainerBatch:
    """Encode a drawn tuple batch with the frozen encoder into the trainer's input.

    With `reuse_padding` (every training step) only the real target windows are encoded; padding steps reuse their
    example's last real encoding instead of encoding the same window again (padded steps are masked out of every loss
    and statistic). The held-out batch, encoded once per run, encodes the whole padded block as it always has.
    With `source_states` (`encode_windows` of the windows the batch was drawn from) the sources are looked up by row
    instead of encoded."""
    b, k, length = batch.targets.shape
    if source_states is not None:
        state = source_states[torch.from_numpy(batch.rows).to(source_states.device)]
    else:
        state = model.encoder.encode(torch.from_numpy(batch.sources).to(device))
    if reuse_padding:
        real, gather = padded_target_rows(batch.mask)
        encoded = model.encoder.encode(torch.from_numpy(batch.targets.reshape(b * k, length)[real]).to(device))
        target = encoded[torch.from_numpy(gather).to(device)].reshape(b, k, -1)
    else:
        target = model.encoder.encode(torch.from_numpy(batch.targets.reshape(b * k, length)).to(device)).reshape(b, k, -1)
    return TorchTrainerBatch(
        state=state,
        target=target,
        actions=torch.from_numpy(batch.actions).to(device),
        action_mask=torch.from_numpy(batch.mask).to(device),
        rel_edits=batch.rel_edits,
        window_ids=batch.window_ids,
    )


def build_held_out(
    model: WorldModel, dataset: Dataset, train: TrainParams, collapse: CollapseParams, seeds: TrainerSeeds, device: str
) -> HeldOut:
    """Draw `collapse.valid_batch_size` tuples from the valid windows with the validation seed and encode them."""
    rng = np.random.default_rng(seeds.validation)
    raw = draw_tuples(
        rng,
        dataset.valid,
        collapse.valid_batch_size,
        window_length=dataset.manifest.counts.window_length,
        weights=edit_type_weights_from_mapping(train.edit_type_weights),
        mix=rollout_mix_from_mapping(train.rollout_step_mix),
        split="valid",
    )
    enc = encode_batch(model, raw, device, reuse_padding=False)
    identity = masked_prediction_loss(enc.state.unsqueeze(1).expand_as(enc.target), enc.target, enc.action_mask)
    last = torch.from_numpy(raw.rollout_steps - 1).to(device)
    return HeldOut(enc.state, enc.target, enc.actions, enc.action_mask, last, float(identity))


@torch.no_grad()
def evaluate(model: WorldModel, held: HeldOut) -> Evaluation:
    """Roll the model out on the held-out batch (eval mode, no gradients)."""
    model.eval()
    pred = model.rollout(held.state, held.actions)
    loss = float(masked_prediction_loss(pred, held.target, held.mask))
    rows = torch.arange(pred.shape[0], device=pred.device)
    return Evaluation(loss, pred[rows, held.last_index], held.target[rows, held.last_index], float(gaussian_kl(pred, held.mask)))

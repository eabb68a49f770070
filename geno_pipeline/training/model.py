"""GenoLeWM-style latent world model: frozen DNA encoder, action encoder, autoregressive predictor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from geno_pipeline.config import ModelParams
from geno_pipeline.data.edits import ACTION_FEATURES
from geno_pipeline.data.records import Edit, dna_codes, edit_actions

__all__ = ["ActionEncoder", "FrozenConvEncoder", "Predictor", "StateEncoder", "WorldModel", "build_world_model", "rollout"]


@runtime_checkable
class StateEncoder(Protocol):
    """What the trainer needs from a (pretrained, frozen) DNA encoder: codes [N, L] -> states [N, D]."""

    state_dim: int

    def encode(self, codes: Tensor) -> Tensor: ...


class FrozenConvEncoder(nn.Module):
    """Seeded random conv features pooled per segment, projected and layer-normalised.

    Stand-in for a pretrained DNA encoder: deterministic from its seed, never trained. Pooling per
    segment keeps position information, so a local edit changes the state of its segment.
    """

    conv_weight: Tensor
    conv_bias: Tensor
    projection: Tensor

    def __init__(self, *, window_length: int, params: ModelParams, seed: int) -> None:
        super().__init__()
        if window_length % params.segments:
            raise ValueError(f"window_length {window_length} must be a multiple of train.model.segments {params.segments}")
        gen = torch.Generator().manual_seed(seed)
        c, k, s, d = params.conv_channels, params.kernel_size, params.segments, params.state_dim
        self.window_length = window_length
        self.state_dim = d
        self.segments = s
        self.register_buffer("conv_weight", torch.randn(c, 4, k, generator=gen) / (4 * k) ** 0.5)
        self.register_buffer("conv_bias", 0.1 * torch.randn(c, generator=gen))
        self.register_buffer("projection", torch.randn(c * s, d, generator=gen) / (c * s) ** 0.5)

    @torch.no_grad()
    def encode(self, codes: Tensor) -> Tensor:
        """uint8/long codes [N, L] (A=0, C=1, G=2, T=3) -> states [N, D]."""
        onehot = nn.functional.one_hot(codes.long(), 4).to(self.conv_weight.dtype).transpose(1, 2)
        pad = self.conv_weight.shape[-1] // 2
        feats = torch.tanh(nn.functional.conv1d(onehot, self.conv_weight, self.conv_bias, padding=pad))
        n, c, length = feats.shape
        pooled = feats.reshape(n, c, self.segments, length // self.segments).mean(-1).reshape(n, c * self.segments)
        return nn.functional.layer_norm(pooled @ self.projection, (self.state_dim,))


class ActionEncoder(nn.Module):
    """Edit features (type, position, lengths, bases) -> action embedding."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(ACTION_FEATURES, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim))

    def forward(self, actions: Tensor) -> Tensor:
        return self.net(actions)


class Predictor(nn.Module):
    """(state, action embedding) -> next state; residual by default."""

    def __init__(self, state_dim: int, hidden_dim: int, *, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.net = nn.Sequential(
            nn.Linear(state_dim + hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, state_dim),
        )

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        out = self.net(torch.cat((state, action), dim=-1))
        return state + out if self.residual else out


class WorldModel(nn.Module):
    """Encoder (frozen) + action encoder + predictor, rolled out autoregressively."""

    def __init__(self, encoder: FrozenConvEncoder, action_encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.action_encoder = action_encoder
        self.predictor = predictor

    def rollout(self, state: Tensor, actions: Tensor) -> Tensor:
        """states [B, D], actions [B, K, A] -> predicted states [B, K, D]."""
        return rollout(self.predictor, self.action_encoder, state, actions)

    # ------------------------------------------------------------ the released model's API

    @property
    def window_length(self) -> int:
        """Bases per window the model reads (longer windows: the first `window_length` bases)."""
        return self.encoder.window_length

    @torch.no_grad()
    def embed(self, windows: Sequence[str] | np.ndarray) -> Tensor:
        """Latent states [N, state_dim] of DNA windows (strings of A/C/G/T, or uint8 codes A=0 C=1 G=2 T=3).

        The state is the frozen encoder's summary of the window: convolutional motif features pooled per segment (so
        it keeps where in the window a motif sits), projected and layer-normalised. Windows that differ by an edit have
        states that differ mostly in the segment of the edit."""
        return self.encoder.encode(self._codes(windows))

    @torch.no_grad()
    def predict(self, windows: Sequence[str] | np.ndarray, edits: Sequence[Edit | Sequence[Edit]]) -> Tensor:
        """The predicted latent states [N, state_dim] of each window after its edits (one `Edit`, or several applied in
        order and rolled out step by step), without encoding the edited sequence."""
        codes = self._codes(windows)
        actions, steps = edit_actions(codes.cpu().numpy(), edits, self.window_length)
        prediction = self.rollout(self.encoder.encode(codes), torch.from_numpy(actions).to(codes.device))
        return prediction[torch.arange(prediction.shape[0]), torch.from_numpy(steps - 1).to(codes.device)]

    @torch.no_grad()
    def edit_scores(self, windows: Sequence[str] | np.ndarray, edits: Sequence[Edit | Sequence[Edit]]) -> Tensor:
        """How far each window's edits move it in the latent space, as predicted: the Euclidean distance [N] between
        `predict(windows, edits)` and `embed(windows)`. A larger score is a larger predicted effect on the window's
        state (a variant-effect score in the model's own terms, not a measured phenotype)."""
        return torch.linalg.vector_norm(self.predict(windows, edits) - self.embed(windows), dim=-1)

    def _codes(self, windows: Sequence[str] | np.ndarray) -> Tensor:
        codes = dna_codes(windows, self.window_length)
        return torch.from_numpy(codes).to(self.encoder.conv_weight.device)


def rollout(predictor: nn.Module, action_encoder: nn.Module, state: Tensor, actions: Tensor) -> Tensor:
    """Autoregressive K-step rollout: each step is fed the previous prediction, not the target."""
    embedded = action_encoder(actions)
    preds = []
    for k in range(actions.shape[1]):
        state = predictor(state, embedded[:, k])
        preds.append(state)
    return torch.stack(preds, dim=1)


def build_world_model(*, window_length: int, params: ModelParams, encoder_seed: int, init_seed: int) -> WorldModel:
    """A model whose trainable weights are initialised from `init_seed` (no global RNG)."""
    encoder = FrozenConvEncoder(window_length=window_length, params=params, seed=encoder_seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global RNG; keep it untouched
        action_encoder = ActionEncoder(params.hidden_dim)
        predictor = Predictor(params.state_dim, params.hidden_dim, residual=params.residual)
    model = WorldModel(encoder, action_encoder, predictor)
    gen = torch.Generator().manual_seed(init_seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                bound = 1.0 / module.in_features**0.5
                module.weight.copy_((torch.rand(module.weight.shape, generator=gen) * 2 - 1) * bound)
                module.bias.copy_((torch.rand(module.bias.shape, generator=gen) * 2 - 1) * bound)
    return model

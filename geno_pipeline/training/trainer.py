"""The optimizer step: masked rollout loss + KL regulariser, AdamW, WSD learning rate, clipping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from geno_pipeline.config import TrainParams
from geno_pipeline.data.edits import RelEdit
from geno_pipeline.training.model import rollout
from geno_pipeline.training.schedule import set_optimizer_lr

__all__ = [
    "TorchTrainer",
    "TorchTrainerBatch",
    "TorchTrainerStepResult",
    "build_adamw_optimizer",
    "gaussian_kl",
    "make_action_mask",
    "masked_prediction_loss",
]


@dataclass(frozen=True)
class TorchTrainerBatch:
    """One encoded minibatch."""

    state: Tensor  # [B, D] encoded source windows
    target: Tensor  # [B, K, D] encoded target windows
    actions: Tensor  # [B, K, A] action features
    action_mask: Tensor  # bool [B, K]
    rel_edits: tuple[tuple[RelEdit, ...], ...]
    window_ids: tuple[str, ...]


@dataclass(frozen=True)
class TorchTrainerStepResult:
    """Scalar outputs of one optimizer step."""

    step: int
    lr_multiplier: float
    loss: float
    pred_loss: float
    kl_reg: float
    action_count: int
    pred_var_per_dim: float
    grad_norm: float

    @property
    def finite(self) -> bool:
        """Loss and gradient norm are finite."""
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def make_action_mask(rel_edits: Sequence[Sequence[RelEdit]], *, device: torch.device | str | None = None) -> Tensor:
    """Boolean [B, K_max] mask: True where example b has a k-th edit."""
    k_max = max((len(e) for e in rel_edits), default=0)
    lengths = torch.tensor([len(e) for e in rel_edits], dtype=torch.long)
    return (torch.arange(k_max)[None, :] < lengths[:, None]).to(device) if device else torch.arange(k_max)[None, :] < lengths[:, None]


def masked_prediction_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared latent error over the real rollout steps (variable K per example)."""
    err = (prediction - target).pow(2).mean(dim=-1)
    weights = mask.to(err.dtype)
    return (err * weights).sum() / weights.sum().clamp_min(1.0)


def gaussian_kl(prediction: Tensor, mask: Tensor, *, eps: float = 1e-6) -> Tensor:
    """KL(N(mu, var) || N(0, 1)) per dim of the predicted states' batch statistics, averaged over dims."""
    w = mask.to(prediction.dtype).unsqueeze(-1)
    count = w.sum().clamp_min(1.0)
    mu = (prediction * w).sum(dim=(0, 1)) / count
    var = ((prediction - mu).pow(2) * w).sum(dim=(0, 1)) / count + eps
    return (0.5 * (var + mu.pow(2) - 1.0 - torch.log(var))).mean()


def build_adamw_optimizer(*, predictor: nn.Module, action_encoder: nn.Module, config: TrainParams) -> torch.optim.AdamW:
    """AdamW over the trainable modules: weight decay on matrices only (not on biases and norms)."""
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for prefix, module in (("action_encoder", action_encoder), ("predictor", predictor)):
        for name, param in module.named_parameters():
            if param.requires_grad:
                (decay if param.dim() >= 2 else no_decay).append((f"{prefix}.{name}", param))
    groups = [
        {
            "params": [p for _, p in decay],
            "names": [n for n, _ in decay],
            "group_name": "decay",
            "weight_decay": config.weight_decay,
            "lr": config.lr,
            "initial_lr": config.lr,
        },
        {
            "params": [p for _, p in no_decay],
            "names": [n for n, _ in no_decay],
            "group_name": "no_decay",
            "weight_decay": 0.0,
            "lr": config.lr,
            "initial_lr": config.lr,
        },
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)


class TorchTrainer:
    """Minimal optimizer loop for predictor training on encoded batches."""

    def __init__(
        self, *, predictor: nn.Module, action_encoder: nn.Module, optimizer: torch.optim.Optimizer, config: TrainParams, total_steps: int
    ) -> None:
        self.predictor = predictor
        self.action_encoder = action_encoder
        self.optimizer = optimizer
        self.config = config
        self.total_steps = total_steps
        self._params = [p for g in optimizer.param_groups for p in g["params"]]

    def train_step(self, batch: TorchTrainerBatch, *, step: int) -> TorchTrainerStepResult:
        """One optimizer step; on a non-finite loss or gradient the weights are left untouched."""
        cfg = self.config
        multiplier = set_optimizer_lr(
            self.optimizer, step=step, total_steps=self.total_steps, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule
        )
        self.predictor.train()
        self.action_encoder.train()
        prediction = rollout(self.predictor, self.action_encoder, batch.state, batch.actions)
        pred_loss = masked_prediction_loss(prediction, batch.target, batch.action_mask)
        kl = gaussian_kl(prediction, batch.action_mask)
        loss = pred_loss + cfg.kl_weight * kl
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip_norm))
        loss_value = float(loss.detach())
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.optimizer.step()
        with torch.no_grad():
            last = prediction[:, 0].detach()
            pred_var = float(last.var(dim=0, unbiased=False).mean())
        return TorchTrainerStepResult(
            step=step,
            lr_multiplier=multiplier,
            loss=loss_value,
            pred_loss=float(pred_loss.detach()),
            kl_reg=float(kl.detach()),
            action_count=int(batch.action_mask.sum()),
            pred_var_per_dim=pred_var,
            grad_norm=grad_norm,
        )

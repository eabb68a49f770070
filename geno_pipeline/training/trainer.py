"""The optimizer step: masked rollout loss + KL regulariser over the global batch, AdamW, WSD learning rate, clipping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from geno_pipeline.config import TrainParams
from geno_pipeline.data.edits import RelEdit
from geno_pipeline.distributed import lazy_tree_sum, ordered_sum, tree_fits, tree_sum
from geno_pipeline.distributed.group import Collective, LocalGroup
from geno_pipeline.training.adamw import AdamW
from geno_pipeline.training.model import rollout
from geno_pipeline.training.schedule import set_optimizer_lr

__all__ = [
    "TorchTrainer",
    "TorchTrainerBatch",
    "TorchTrainerStepResult",
    "build_adamw_optimizer",
    "flat_grad",
    "gaussian_kl",
    "global_kl_terms",
    "make_action_mask",
    "masked_prediction_loss",
    "set_flat_grad",
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


def build_adamw_optimizer(*, predictor: nn.Module, action_encoder: nn.Module, config: TrainParams) -> AdamW:
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
    return AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)


class TorchTrainer:
    """The optimizer step over a global batch cut into micro-batches, on one process or several.

    Each micro-batch's loss is normalised by the global count of real rollout steps, and the KL term is the KL of the
    global batch's statistics: its mean and variance are summed from per-micro-batch partial sums in micro-batch
    order, and each micro-batch backpropagates the exact first-order share of the global KL (see `global_kl_terms`).
    Per-micro-batch gradients are summed along one fixed balanced binary tree over the micro-batches
    (`distributed.tree_sum`): each rank sums its own subtrees, the group combines the partial sums along the same tree
    (`Collective.tree_reduce`), so the update is the same bits for any world size that divides the micro-batch count.
    `reduction="gather"` gathers every micro-batch's gradient instead and sums the same tree: the same bits and
    (M - M/W) gradients received per rank instead of ~2(W-1)/W of one (what other world sizes do; the bench's reference).
    """

    def __init__(
        self,
        *,
        predictor: nn.Module,
        action_encoder: nn.Module,
        optimizer: AdamW,
        config: TrainParams,
        total_steps: int,
        group: Collective | None = None,
        reduction: Literal["tree", "gather"] = "tree",
    ) -> None:
        if reduction not in ("tree", "gather"):
            raise ValueError(f"reduction {reduction!r} is not one of tree, gather")
        self.reduction = reduction
        self.predictor = predictor
        self.action_encoder = action_encoder
        self.optimizer = optimizer
        self.config = config
        self.total_steps = total_steps
        self.group: Collective = group if group is not None else LocalGroup()
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._modules = [*predictor.modules(), *action_encoder.modules()]

    def train_step(
        self, shards: TorchTrainerBatch | Sequence[TorchTrainerBatch], *, step: int, action_count: int | None = None
    ) -> TorchTrainerStepResult:
        """One optimizer step on this rank's micro-batches of the global batch; on a non-finite loss or gradient the weights
        are left untouched. `action_count` is the global batch's number of real rollout steps (default: these shards')."""
        cfg, group = self.config, self.group
        shards = [shards] if isinstance(shards, TorchTrainerBatch) else list(shards)
        count = int(sum(int(s.action_mask.sum()) for s in shards)) if action_count is None else action_count
        n = float(max(count, 1))
        multiplier = set_optimizer_lr(
            self.optimizer, step=step, total_steps=self.total_steps, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule
        )
        if not all(m.training for m in self._modules):  # `.train()` walks every module each call: only when one is not
            self.predictor.train()
            self.action_encoder.train()
        predictions, weights, err_sums, first = [], [], [], []
        for shard in shards:
            prediction = rollout(self.predictor, self.action_encoder, shard.state, shard.actions)
            w = shard.action_mask.to(prediction.dtype).unsqueeze(-1)
            err_sums.append(((prediction - shard.target).pow(2).mean(dim=-1) * w.squeeze(-1)).sum())
            first.append((prediction * w).sum(dim=(0, 1)))
            predictions.append(prediction)
            weights.append(w)
        dim = predictions[0].shape[-1]
        # one exchange: per micro-batch, its masked sum of predictions, squared error, squared deviations from its own
        # mean and count -> the global mean, loss and variance (the micro-batches' spreads about their means plus their
        # means' spread about the global mean, combined in micro-batch order: Chan, Golub & LeVeque's pairwise update)
        gathered = group.gather_rows(
            torch.stack([micro_batch_moments(f, e, p, w) for f, e, p, w in zip(first, err_sums, predictions, weights, strict=True)])
        )
        totals = ordered_sum(gathered)
        mu, pred_loss = totals[:dim] / n, totals[dim] / n
        counts = gathered[:, -1:]
        spread = ordered_sum(counts * (gathered[:, :dim] / counts.clamp(min=1.0) - mu).pow(2))
        var = (totals[dim + 1 : 2 * dim + 1] + spread) / n + KL_EPS
        # each micro-batch's squared deviations from the global mean: the graph its share of the KL backpropagates through
        second = [((p - mu).pow(2) * w).sum(dim=(0, 1)) for p, w in zip(predictions, weights, strict=True)]
        kl, grad_mu, grad_var = global_kl_terms(mu, var)

        # each micro-batch's gradient on its own, summed along the fixed tree over the micro-batches
        def backward(index: int) -> None:
            surrogate = err_sums[index] / n + cfg.kl_weight * ((grad_mu * first[index]).sum() + (grad_var * second[index]).sum()) / n
            self.optimizer.zero_grad()
            surrogate.backward()

        def gradient(index: int) -> Tensor:
            backward(index)
            return flat_grad(self._params)

        if group.size == 1 and len(shards) == 1:  # a tree of one leaf is that leaf: its gradient stays where backward put it
            backward(0)
            for p in self._params:
                if p.grad is None:  # not reached: a zero gradient, as `flat_grad` gives it
                    p.grad = torch.zeros_like(p)
        elif self.reduction == "tree" and tree_fits(len(shards) * group.size, group.size):  # this rank's micro-batches are whole subtrees
            set_flat_grad(self._params, group.tree_reduce(lazy_tree_sum(len(shards), gradient)))
        else:  # any other world size: every micro-batch's gradient gathered, then the same tree (more bytes, same bits)
            set_flat_grad(self._params, tree_sum(group.gather_rows(torch.stack([gradient(i) for i in range(len(shards))]))))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip_norm))
        loss = pred_loss + cfg.kl_weight * kl
        loss_value = float(loss)
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.optimizer.step()
        return TorchTrainerStepResult(
            step=step,
            lr_multiplier=multiplier,
            loss=loss_value,
            pred_loss=float(pred_loss),
            kl_reg=float(kl),
            action_count=count,
            grad_norm=grad_norm,
        )


KL_EPS = 1e-6


def micro_batch_moments(first: Tensor, err_sum: Tensor, prediction: Tensor, weight: Tensor) -> Tensor:
    """One micro-batch's row for the global statistics: [masked sum of predictions (D), squared-error sum, masked sum
    of squared deviations from its own mean (D), count of real rollout steps]. A micro-batch with no real step has a
    zero row (its mean is taken as 0)."""
    with torch.no_grad():
        count = weight.sum()
        mean = first.detach() / count.clamp(min=1.0)
        deviations = ((prediction - mean).pow(2) * weight).sum(dim=(0, 1))
        return torch.cat((first.detach(), err_sum.detach()[None], deviations, count[None]))


def global_kl_terms(mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The KL of N(mu, var) to N(0, 1) averaged over dims, and its derivatives d/dmu and d/dvar.

    With mu and var the global batch's statistics, a micro-batch's surrogate `(dKL/dmu . S1_j + dKL/dvar . S2_j) / n`
    (S1_j its masked sum of predictions, S2_j its masked sum of squared deviations from mu) has exactly the gradient of
    the global KL with respect to that micro-batch's predictions: d var / d p_i = 2 w_i (p_i - mu) / n, because the
    deviations from the global mean sum to zero.
    """
    dim = mu.shape[-1]
    kl = (0.5 * (var + mu.pow(2) - 1.0 - torch.log(var))).mean()
    return kl, mu / dim, 0.5 * (1.0 - 1.0 / var) / dim


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    """Every parameter's gradient (zeros where none) as one flat vector, in parameter order."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def set_flat_grad(params: Sequence[Tensor], flat: Tensor) -> None:
    """Write a `flat_grad`-shaped vector back into the parameters' `.grad`."""
    offset = 0
    for p in params:
        size = p.numel()
        p.grad = flat[offset : offset + size].view_as(p)  # `flat` is a fresh sum: each gradient is a view of it
        offset += size

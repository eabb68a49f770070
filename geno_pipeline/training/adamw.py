"""AdamW, the arithmetic of `torch.optim.AdamW(foreach=False)` op for op, without torch.optim.

torch.optim's optimizers import torch._dynamo the first time any of their methods runs (`add_param_group`, `step`,
`zero_grad` are wrapped by `torch._disable_dynamo`): about 1.4 s of every training process's start on a CPU, in every
worker of a job, for a compiler this pipeline never uses. This class keeps the same state (`state[param]` holds `step`,
a float32 CPU scalar, then `exp_avg` and `exp_avg_sq`, created in that order on a parameter's first step) and the same
`param_groups`, and updates each parameter with the same tensor operations in the same order as torch's single-tensor
AdamW (decoupled weight decay; no amsgrad, maximize, capturable or differentiable), so checkpoints and weights are the
same bytes. tests/test_trainer_math.py compares the two bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["AdamW"]


class AdamW:
    """Decoupled-weight-decay Adam over param groups (dicts with `params` and any other keys, kept as given)."""

    def __init__(
        self, groups: Iterable[Mapping[str, Any]], *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 1e-2}
        self.param_groups: list[dict[str, Any]] = []
        for group in groups:
            params = list(group["params"])
            if not params or not all(isinstance(p, torch.Tensor) for p in params):
                raise ValueError("every AdamW param group needs a non-empty list of tensors")
            self.param_groups.append({**defaults, **group, "params": params})
        seen = [id(p) for g in self.param_groups for p in g["params"]]
        if len(set(seen)) != len(seen):
            raise ValueError("a parameter appears in more than one AdamW param group")
        self.state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (torch's `zero_grad()` default, `set_to_none=True`)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse or torch.is_complex(p):
                    raise RuntimeError("AdamW here takes dense real gradients only")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=_scalar_dtype(), device="cpu")
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                _update(p, p.grad, state, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps)


def _scalar_dtype() -> torch.dtype:
    """torch.optim's dtype for `step`: float64 under a float64 default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _update(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
) -> None:
    """torch.optim.adam._single_tensor_adam for one parameter (decoupled_weight_decay=True), operation for operation."""
    step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
    step_t += 1
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = step_t.item()
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)

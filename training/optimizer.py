"""Rectified Adam (Liu et al. 2020; the paper's optimiser) and its step learning-rate schedule, on the device.

Every quantity that changes per step (the step count, the learning rate, the bias corrections and the
rectification term) is a tensor, so a step never reads a number back to the host and can be captured in a
CUDA graph. torch.optim.RAdam does this only with `capturable=True`, which it refuses on the CPU; without
it, it calls `.item()` on every parameter's step count (800-3,000 host round trips per step here).

The update is RAdam's, as torch.optim.RAdam computes it (no weight decay, which the paper does not use):
  m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
  p <- p - lr * m / (1 - b1^t) * r_t * sqrt(1 - b2^t) / (sqrt(v) + eps)   if rho_t > 5
  p <- p - lr * m / (1 - b1^t)                                             otherwise
It works elementwise, so parameters stacked over seeds (a leading seed axis) are each updated exactly as
their seed's own optimiser would update them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def step_learning_rate(step: torch.Tensor, base: float, decay_every: int, factor: float) -> torch.Tensor:
    """Learning rate of optimiser step `step` (1-based), decayed x`factor` every `decay_every` steps
    (torch's StepLR after step - 1 scheduler steps)."""
    decays = torch.div(step - 1, decay_every, rounding_mode="floor")
    return base * torch.pow(torch.full_like(step, factor), decays)


@dataclass
class RAdam:
    """RAdam over a list of tensors (usually stacked over seeds). `step_count` is a (1,) float64 tensor: not 0-dim,
    because torch 2.11's AOTAutograd (torch.compile) drops in-place updates of 0-dim float64 inputs (the compiled
    step then never counted, and divided by 1 - b1^0 = 0)."""

    params: list[torch.Tensor]
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    step_count: torch.Tensor
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @classmethod
    def create(cls, params: Sequence[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8) -> "RAdam":
        params = list(params)
        device = params[0].device
        return cls(params, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
                   torch.zeros(1, dtype=torch.float64, device=device), betas, eps)

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One update with the gradients in `p.grad` and learning rate `lr` (a 0-dim tensor)."""
        b1, b2 = self.betas
        grads = [p.grad for p in self.params]
        self.step_count.add_(1.0)
        t = self.step_count.squeeze(0)
        torch._foreach_lerp_(self.exp_avg, grads, 1.0 - b1)
        torch._foreach_mul_(self.exp_avg_sq, b2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, value=1.0 - b2)
        bc1 = 1.0 - torch.pow(torch.full_like(t, b1), t)
        bc2 = 1.0 - torch.pow(torch.full_like(t, b2), t)
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * torch.pow(torch.full_like(t, b2), t) / bc2
        rectified = rho_t > 5.0
        rect = torch.sqrt(torch.clamp((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                      / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), min=0.0))
        lr = lr.to(torch.float64).reshape(())
        # update = m * (adaptive / (sqrt(v) + eps) + plain): exactly one of the two terms is non-zero.
        adaptive = torch.where(rectified, lr * rect * torch.sqrt(bc2) / bc1, torch.zeros_like(t))
        plain = torch.where(rectified, torch.zeros_like(t), lr / bc1)
        dtype = self.params[0].dtype
        update = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_add_(update, self.eps)
        torch._foreach_reciprocal_(update)
        torch._foreach_mul_(update, adaptive.to(dtype))
        torch._foreach_mul_(update, self.exp_avg)
        # Added as a list: adding a tensor scalar with _foreach_add_ reads it back to the host on the CPU.
        torch._foreach_add_(update, torch._foreach_mul(self.exp_avg, plain.to(dtype)))
        torch._foreach_sub_(self.params, update)

    def state_of(self, index: int, names: Sequence[str]) -> dict:
        """One seed's optimiser state (seed `index` of the stacked tensors), by parameter name."""
        return {"step": float(self.step_count), "betas": list(self.betas), "eps": self.eps,
                "exp_avg": {n: m[index].detach().cpu().clone() for n, m in zip(names, self.exp_avg)},
                "exp_avg_sq": {n: v[index].detach().cpu().clone() for n, v in zip(names, self.exp_avg_sq)}}

    @torch.no_grad()
    def load_states(self, states: Sequence[dict], names: Sequence[str]) -> None:
        """Restore from per-seed states (in stacking order); all seeds must be at the same step."""
        steps = {s["step"] for s in states}
        if len(steps) != 1:
            raise ValueError(f"the seeds' optimiser states are at different steps {sorted(steps)}")
        self.step_count.fill_(steps.pop())
        for k, name in enumerate(names):
            self.exp_avg[k].copy_(torch.stack([s["exp_avg"][name] for s in states]))
            self.exp_avg_sq[k].copy_(torch.stack([s["exp_avg_sq"][name] for s in states]))

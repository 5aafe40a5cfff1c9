"""Training objective (paper section 3.1.5): weak BCE on weakly labelled clips + strong BCE on strongly
labelled clips + consistency_weight (2) x (clip MSE + frame MSE) between student and teacher probabilities
over all clips. Masked means keep the step free of data-dependent shapes (no host syncs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.data import STRONG, WEAK


@dataclass
class LossTerms:
    total: torch.Tensor
    strong_bce: torch.Tensor
    weak_bce: torch.Tensor
    consistency_clip: torch.Tensor
    consistency_frame: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.__dict__.items()}


def _masked_mean(per_clip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(per_clip.dtype)
    return (per_clip * m).sum() / m.sum().clamp(min=1.0)


def mean_teacher_loss(student_frame_logits: torch.Tensor, student_clip_logits: torch.Tensor,
                      teacher_frame_probs: torch.Tensor, teacher_clip_probs: torch.Tensor,
                      strong_targets: torch.Tensor, weak_targets: torch.Tensor, kind: torch.Tensor,
                      consistency_weight: float) -> LossTerms:
    frame_logits = student_frame_logits.float()
    clip_logits = student_clip_logits.float()
    strong = F.binary_cross_entropy_with_logits(frame_logits, strong_targets.float(), reduction="none").mean(dim=(1, 2))
    weak = F.binary_cross_entropy_with_logits(clip_logits, weak_targets.float(), reduction="none").mean(dim=1)
    strong_bce = _masked_mean(strong, kind == STRONG)
    weak_bce = _masked_mean(weak, kind == WEAK)
    cons_clip = F.mse_loss(torch.sigmoid(clip_logits), teacher_clip_probs.float())
    cons_frame = F.mse_loss(torch.sigmoid(frame_logits), teacher_frame_probs.float())
    total = strong_bce + weak_bce + consistency_weight * (cons_clip + cons_frame)
    return LossTerms(total, strong_bce, weak_bce, cons_clip, cons_frame)

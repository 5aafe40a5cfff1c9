"""Mean teacher (Tarvainen & Valpola 2017): the teacher's weights are an exponential moving average of
the student's, decay 0.999 per training step (paper section 3.1.5)."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, for every parameter.

    Buffers (batch-norm running statistics) are not averaged: the teacher runs its own forward passes in
    training mode on the same batches and tracks its own statistics, as in the DESED baseline.
    """
    ema_update_(list(teacher.parameters()), list(student.parameters()), decay)


@torch.no_grad()
def ema_update_(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], decay: float) -> None:
    """The same on lists of tensors (e.g. parameters stacked over seeds), in place on `teacher`."""
    t_params = list(teacher)
    s_params = [p.detach() for p in student]
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)

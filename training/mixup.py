"""Mixup (Zhang et al. 2018) at the paper's rate 0.33 with ratios ~ Beta(0.2, 0.2), applied consistently to
every input stream, the availability masks and the targets.

Partners are drawn within each supervision group of the batch (strong with strong, weak with weak,
unlabelled with unlabelled; training/draws.py), so every mixed clip keeps one kind of target, as in the DESED
baseline. One ratio per batch. Availability of a mixed pair is the AND of the two: a visual stream counts as
present for the mix only if both clips have it (the mixed embedding is then a true mix of two real
embeddings); frame masks are ANDed the same way. If either video is missing, the mix is treated as a clip
without that stream (weight 0, audio carries it), never as a half-strength embedding mixed with zeros.

The decision is data, not control flow: a batch that is not mixed goes through the same arithmetic with
ratio 1 (x * 1 + partner * 0 == x exactly), so the training step has one shape and never asks the host.
"""

from __future__ import annotations

import torch

from training.data import Batch


def mix_pairs(batch: Batch, partner: torch.Tensor, lam: torch.Tensor | float,
              mix: torch.Tensor | bool = True) -> Batch:
    """Mix every clip i with clip partner[i] at ratio lam (lam * own + (1 - lam) * partner) where `mix`
    holds (a bool or a 0-dim bool tensor); otherwise return the batch's values unchanged."""
    mix = torch.as_tensor(mix, device=batch.logmel.device)
    lam = torch.where(mix, torch.as_tensor(lam, device=batch.logmel.device), 1.0)

    def blend(t: torch.Tensor) -> torch.Tensor:
        ratio = lam.to(t.dtype)
        return t * ratio + t.index_select(0, partner) * (1.0 - ratio)

    available = torch.where(mix, batch.available & batch.available.index_select(0, partner), batch.available)
    visual_valid = []
    for s, valid in enumerate(batch.visual_valid):
        both = torch.where(mix, valid & valid.index_select(0, partner), valid)
        # A stream missing after the AND attends to all frames (its weight is 0), as in data.load_clips.
        visual_valid.append(both | ~available[:, s + 1, None])
    return Batch(logmel=blend(batch.logmel), visual=[blend(v) for v in batch.visual], visual_valid=visual_valid,
                 available=available, strong=blend(batch.strong), weak=blend(batch.weak), kind=batch.kind)

"""Mixup (Zhang et al. 2018) at the paper's rate 0.33 with ratios ~ Beta(0.2, 0.2), applied consistently to
every input stream, the availability masks and the targets.

Partners are drawn within each supervision group of the batch (strong with strong, weak with weak,
unlabelled with unlabelled), so every mixed clip keeps one kind of target, as in the DESED baseline.
One ratio per batch. Availability of a mixed pair is the AND of the two: a visual stream counts as present
for the mix only if both clips have it (the mixed embedding is then a true mix of two real embeddings);
frame masks are ANDed the same way. If either video is missing, the mix is treated as a clip without that
stream (weight 0, audio carries it), never as a half-strength embedding mixed with zeros.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from training.data import Batch


def mix_pairs(batch: Batch, partner: torch.Tensor, lam: float) -> Batch:
    """Mix every clip i with clip partner[i] at ratio lam (lam * own + (1 - lam) * partner)."""
    def mix(t: torch.Tensor) -> torch.Tensor:
        return t * lam + t.index_select(0, partner) * (1.0 - lam)

    visual_valid = []
    available = batch.available & batch.available.index_select(0, partner)
    for s, valid in enumerate(batch.visual_valid):
        both = valid & valid.index_select(0, partner)
        # A stream missing after the AND attends to all frames (its weight is 0), as in data.load_clips.
        visual_valid.append(both | ~available[:, s + 1, None])
    return Batch(logmel=mix(batch.logmel), visual=[mix(v) for v in batch.visual], visual_valid=visual_valid,
                 available=available, strong=mix(batch.strong), weak=mix(batch.weak), kind=batch.kind)


def group_partners(slices: Sequence[slice], rng: np.random.Generator, device: torch.device | str) -> torch.Tensor:
    """A permutation of the batch that only pairs clips within the same slice (supervision group)."""
    parts = [s.start + rng.permutation(s.stop - s.start) for s in slices]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64)).to(device)


def maybe_mixup(batch: Batch, slices: Sequence[slice], rng: np.random.Generator, rate: float,
                alpha: float) -> tuple[Batch, float | None]:
    """With probability `rate` return the mixed batch and its ratio, else the batch unchanged and None."""
    if rate <= 0 or rng.random() >= rate:
        return batch, None
    lam = float(rng.beta(alpha, alpha))
    partner = group_partners(slices, rng, batch.logmel.device)
    return mix_pairs(batch, partner, lam), lam

"""Learned, data-dependent interpolation weights: a gate that tells a black screen from a real picture.

The paper sets the multi-encoder interpolation weights by hand or draws them at random, and names weights that
depend on the data as future work (section 4): many DESED videos are a still image or a black screen, which a
fixed visual weight trusts as much as a real picture. Here a small gating network reads pooled summaries of the
encoders' memories (per stream: the mean and the standard deviation over its real frames, which tell a picture
that moves from one that does not) and outputs the interpolation weights:

    weights = softmax(logits / temperature + log(prior))        over the streams, per clip (mode "clip")
                                                                  or per decoder frame (mode "frame")
    visual weights *= (1 - audio_floor);  audio weight = 1 - sum(visual weights)

`prior` is what the model is given as weights: the resolved fixed, equal, random or forced weights
(training/fusion.resolve_weights). Its zeros are the availability mask: log(0) = -inf, so a missing stream gets
exactly weight 0 from the softmax, with no renormalisation step; the gate's input from that stream is zeroed
too, so nothing leaks from it and a missing stream is the same to the gate as one forced off. The prior's
values tilt the softmax (equal weights, the learned models' training prior, tilt nothing; forcing the audio
weight to 1 at inference turns the video off exactly as for a fixed-weight model). The audio weight is computed
as 1 minus the others, so a clip without video gets exactly (1, 0, ...) and its output is bit-identical to the
same clip's with the visual weight forced to 0. The floor keeps the audio weight at or above `audio_floor` on
clips with video, as the paper never lets it reach 0.

Training: the gate is part of the model, so it is trained end to end with the rest of it, the mean teacher
holds its EMA copy and the grouped (vmap) step runs it per seed without host reads (every operation is a tensor
operation; nothing is read back or made from host data). Mixup: the gate sees the mixed inputs' memories, and a
mixed pair's availability is the AND of the two clips' (training/mixup.py): if either clip lacks a video, the
mixed clip's prior has a 0 there and the gate gives that stream exactly weight 0, whatever the mixed embedding.

Video dropout (`video_dropout`, 0.3 by default): in training, the video of that share of the clips (after mixup)
is hidden as if it were missing (training/step.hide_video). A clip without video takes the audio-only path (audio
weight exactly 1), and a gate that leans on the picture would otherwise train that path on the missing-video clips
alone: on the demo's set the learned bi-encoder then lost 2-8 points to audio-only on clips without video, and
with 30% dropout it matched audio-only there (benchmarks/results/gate.md).

Initially the gate's last layer is zero, so a new model starts from the prior (then the floor): its first steps
are those of a model with fixed weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from training.config import GateConfig

SUMMARY_EPS = 1e-5  # inside the square root of the frame variance: a black screen's variance is 0


def pooled_summaries(memories: Sequence[torch.Tensor], valids: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """(B, S * 2d): per stream the mean and the standard deviation of its memory over its real frames."""
    parts = []
    for memory, valid in zip(memories, valids):
        if valid is None:
            mean = memory.mean(dim=1)
            var = (memory - mean[:, None]).square().mean(dim=1)
        else:
            m = valid.to(memory.dtype)[..., None]
            count = m.sum(dim=1).clamp_min(1.0)
            mean = (memory * m).sum(dim=1) / count
            var = ((memory - mean[:, None]).square() * m).sum(dim=1) / count
        parts += [mean, torch.sqrt(var + SUMMARY_EPS)]
    return torch.cat(parts, dim=-1)


def gated_weights(logits: torch.Tensor, prior: torch.Tensor, temperature: float = 1.0,
                  audio_floor: float = 0.0) -> torch.Tensor:
    """Interpolation weights from gate logits (B, S) or (B, T, S) and the prior (B, S): see the module docstring.

    A stream whose prior is 0 gets exactly 0; the weights of a clip (or frame) sum to 1; the audio weight is at
    least `audio_floor` wherever a visual stream is available.
    """
    prior = prior.to(torch.float32) if not prior.is_floating_point() else prior
    log_prior = torch.log(prior)
    if logits.dim() == 3:
        log_prior = log_prior[:, None, :]
    w = torch.softmax(logits.to(log_prior.dtype) / temperature + log_prior, dim=-1)
    visual = w[..., 1:] * (1.0 - audio_floor)
    # 1 minus the rest, not a renormalised softmax output: exactly 1 where every visual weight is exactly 0.
    audio = 1.0 - visual.sum(dim=-1, keepdim=True)
    return torch.cat([audio, visual], dim=-1)


class InterpolationGate(nn.Module):
    """The gating network: pooled memory summaries (and, per frame, the memories at that frame) -> logits."""

    def __init__(self, config: GateConfig, d_model: int, n_streams: int):
        super().__init__()
        if config.mode not in ("clip", "frame"):
            raise ValueError(f"InterpolationGate needs mode clip or frame, got {config.mode!r}")
        self.per_frame = config.mode == "frame"
        self.temperature, self.audio_floor = float(config.temperature), float(config.audio_floor)
        inputs = n_streams * d_model * (3 if self.per_frame else 2)
        self.hidden = nn.Linear(inputs, config.hidden)
        self.act = nn.SiLU()
        self.logits = nn.Linear(config.hidden, n_streams)
        # Zero logits: a new gate gives the prior's weights (then the floor), so training starts from fixed weights.
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def features(self, memories: Sequence[torch.Tensor], valids: Sequence[torch.Tensor | None],
                 available: torch.Tensor) -> torch.Tensor:
        """(B, F) per clip, or (B, T + 1, F) per decoder position (T frames, then the class token, which gets
        each stream's mean frame). A stream that is not available (prior 0) enters as zeros, so a missing stream
        and one forced off give the gate the same input."""
        keep = [available[:, s, None].to(m.dtype) for s, m in enumerate(memories)]
        summary = pooled_summaries(memories, valids)
        d = memories[0].shape[-1]
        summary = torch.cat([summary[:, 2 * s * d: 2 * (s + 1) * d] * k for s, k in enumerate(keep)], dim=-1)
        if not self.per_frame:
            return summary
        frames = memories[0].shape[1]
        if any(m.shape[1] != frames for m in memories):
            raise ValueError(f"a per-frame gate needs memories of equal length, got {[m.shape[1] for m in memories]}")
        per_frame = torch.cat([m * k[:, None] for m, k in zip(memories, keep)], dim=-1)  # (B, T, S * d)
        means = torch.cat([summary[:, 2 * s * d: (2 * s + 1) * d] for s in range(len(memories))], dim=-1)
        per_frame = torch.cat([per_frame, means[:, None, :]], dim=1)  # + the class token's position
        return torch.cat([per_frame, summary[:, None, :].expand(-1, frames + 1, -1)], dim=-1)

    def forward(self, memories: Sequence[torch.Tensor], valids: Sequence[torch.Tensor | None],
                prior: torch.Tensor) -> torch.Tensor:
        """Weights (B, S) per clip or (B, T + 1, S) per decoder position; prior (B, S) resolved weights."""
        logits = self.logits(self.act(self.hidden(self.features(memories, valids, prior > 0))))
        return gated_weights(logits, prior, self.temperature, self.audio_floor)

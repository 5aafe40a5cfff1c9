"""Multi-encoder middle fusion with partially available streams (paper section 2.2).

One encoder per input stream (audio always first; visual embeddings are projected to d_model by a
linear layer), every decoder block's cross-attention duplicated per encoder, and the copies' outputs
interpolated with per-clip weights. A clip whose stream is missing gets weight 0 for that stream and the
other weights are renormalised to sum to 1, in training and in inference alike.

With `model.gate.mode` clip or frame the weights are learned from the data (training/gate.py): the weights
the model is given become the gate's prior (their zeros mask missing streams), and the gate's output, per clip
or per decoder frame, is what the decoder interpolates with.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from training.cnn import CNNFrontEnd
from training.config import ModelConfig
from training.gate import InterpolationGate


def resolve_weights(base: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Per-clip interpolation weights.

    base: (S,) or (B, S) non-negative weights; available: (B, S) bool (column 0, audio, always True).
    Missing streams get 0 and the rest are renormalised to sum 1. If nothing with a positive weight is
    available (e.g. audio weight forced to 0 on a clip without video), the audio stream gets weight 1,
    as the paper does whenever visuals are unavailable.
    """
    available = available.to(torch.bool)
    base = base if base.is_floating_point() else base.to(torch.float32)
    if base.dim() == 1:
        base = base.unsqueeze(0).expand(available.shape[0], -1)
    w = torch.where(available, base, torch.zeros_like(base))
    total = w.sum(dim=1, keepdim=True)
    audio_only = torch.zeros_like(w)
    audio_only.select(1, 0).fill_(1.0)  # not `[:, 0] = 1.0`: that makes a tensor from host data
    empty = total <= 0
    w = torch.where(empty, audio_only, w / torch.where(empty, torch.ones_like(total), total))
    return w


def interpolate(outputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Convex combination of per-encoder outputs (each (B, T, d)) with (B, S) per-clip or (B, T, S) per-frame
    weights.

    A stream with weight 0 contributes exactly 0 (its output is finite: missing inputs are zeros), so a
    clip without video gives bit-for-bit the output of the same clip with that weight forced to 0.
    """
    w = weights.to(outputs[0].dtype)
    if w.dim() == 2:
        w = w[:, None, :]
    out = outputs[0] * w[..., 0, None]
    for s in range(1, len(outputs)):
        out = out + outputs[s] * w[..., s, None]
    return out


class MultiEncoderModel(nn.Module):
    """CNN front-end + one encoder stack per stream + a decoder with per-stream cross-attention.

    The decoder reads the CNN's audio features with a learnable classification token appended (its output
    gives the clip-level prediction; the other outputs give the frame-level predictions). The audio
    encoder reads the same CNN features ("spectral auditory maps as inputs to their decoders and to one of
    their encoders"); the CNN is shared by both.
    """

    def __init__(self, config: ModelConfig, visual_dims: Sequence[int],
                 encoder_block: Callable[[], nn.Module], decoder_block: Callable[[int], nn.Module],
                 absolute_positions: bool, final_norm: bool):
        super().__init__()
        d = config.d_model
        self.n_streams = 1 + len(visual_dims)
        self.cnn = CNNFrontEnd(config.cnn, d)
        self.visual_proj = nn.ModuleList(nn.Linear(dim, d) for dim in visual_dims)
        self.encoders = nn.ModuleList(
            nn.ModuleList(encoder_block() for _ in range(config.encoder_blocks)) for _ in range(self.n_streams))
        self.encoder_norms = nn.ModuleList(
            (nn.LayerNorm(d) if final_norm else nn.Identity()) for _ in range(self.n_streams))
        self.decoder = nn.ModuleList(decoder_block(self.n_streams) for _ in range(config.decoder_blocks))
        self.decoder_norm = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.absolute_positions = absolute_positions
        if absolute_positions:
            self.encoder_positions = nn.ParameterList(
                nn.Parameter(torch.randn(1, config.max_positions, d) * 0.02) for _ in range(self.n_streams))
            self.decoder_positions = nn.Parameter(torch.randn(1, config.max_positions, d) * 0.02)
        self.classifier = nn.Linear(d, config.n_classes)
        # Built last, so that the rest of a gated model starts from the same parameters as the ungated one.
        self.gate = InterpolationGate(config.gate, d, self.n_streams) \
            if config.gate.mode != "none" and self.n_streams > 1 else None

    def encode(self, logmel: torch.Tensor, visual: Sequence[torch.Tensor], visual_valid: Sequence[torch.Tensor]
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """The CNN's audio features, every encoder's memory and the memories' key masks."""
        audio = self.cnn(logmel)
        streams = [audio] + [proj(v) for proj, v in zip(self.visual_proj, visual)]
        valids: list[torch.Tensor | None] = [None] + list(visual_valid)
        memories = []
        for s, (x, blocks) in enumerate(zip(streams, self.encoders)):
            if self.absolute_positions:
                x = x + self.encoder_positions[s][:, : x.shape[1]]
            for block in blocks:
                x = block(x, valids[s])
            memories.append(self.encoder_norms[s](x))
        return audio, memories, valids

    def fusion_weights(self, memories: Sequence[torch.Tensor], valids: Sequence[torch.Tensor | None],
                       weights: torch.Tensor) -> torch.Tensor:
        """The weights the decoder interpolates with: the given ones, or the gate's with them as its prior."""
        return weights if self.gate is None else self.gate(memories, valids, weights)

    @torch.no_grad()
    def interpolation_weights(self, logmel: torch.Tensor, visual: Sequence[torch.Tensor],
                              visual_valid: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """The weights a forward pass with these inputs interpolates with ((B, S), or (B, T + 1, S) per frame),
        without running the decoder: what evaluation reports of a learned gate."""
        _, memories, valids = self.encode(logmel, visual, visual_valid)
        return self.fusion_weights(memories, valids, weights)

    def forward(self, logmel: torch.Tensor, visual: Sequence[torch.Tensor], visual_valid: Sequence[torch.Tensor],
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logmel (B, 512, 64) standardised; visual[s] (B, 64, D_s) with zeros where missing;
        visual_valid[s] (B, 64) bool key masks (all True for clips whose stream is missing: their weight is 0);
        weights (B, S) resolved interpolation weights (a gated model's prior). Returns frame logits (B, 64, C),
        clip logits (B, C)."""
        audio, memories, valids = self.encode(logmel, visual, visual_valid)
        weights = self.fusion_weights(memories, valids, weights)
        y = torch.cat([audio, self.cls_token.expand(audio.shape[0], -1, -1).to(audio.dtype)], dim=1)
        if self.absolute_positions:
            y = y + self.decoder_positions[:, : y.shape[1]]
        for block in self.decoder:
            y = block(y, memories, valids, weights)
        logits = self.classifier(self.decoder_norm(y))
        return logits[:, :-1], logits[:, -1]

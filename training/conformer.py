"""Conformer encoder and decoder blocks (paper section 2.1.2, Gulati et al. 2020).

Encoder block: x + 1/2 FF(x) -> + relative MHSA -> + convolution module -> + 1/2 FF -> LayerNorm.
Decoder block: the same with a relative multi-head cross-attention (duplicated per encoder and
interpolated, training/fusion.py) after the self-attention. Swish activations; convolution module:
pointwise conv + GLU, depthwise conv (kernel 7), batch norm, Swish, pointwise conv, dropout 0.1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from training.config import ModelConfig
from training.dropout import dropout_layer
from training.fusion import interpolate
from training.relative_attention import RelativeMultiHeadAttention


class ConformerFeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, ff_dim), nn.SiLU(), dropout_layer(dropout),
                                 nn.Linear(ff_dim, d_model), dropout_layer(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    def __init__(self, d_model: int, kernel: int, dropout: float, bn_momentum_keras: float = 0.9):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        # Paper: momentum 0.9 (Keras convention) == PyTorch momentum 0.1.
        self.batch_norm = nn.BatchNorm1d(d_model, momentum=1.0 - bn_momentum_keras)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)
        self.dropout = dropout_layer(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        h = self.glu(self.pointwise_in(self.norm(x).transpose(1, 2)))
        if valid is not None:
            # Padded frames must not leak into their neighbours through the depthwise kernel.
            h = h * valid[:, None, :].to(h.dtype)
        h = self.pointwise_out(self.act(self.batch_norm(self.depthwise(h))))
        return self.dropout(h.transpose(1, 2))


def _relative_attention(config: ModelConfig) -> RelativeMultiHeadAttention:
    return RelativeMultiHeadAttention(config.d_model, config.heads, config.d_head, config.dropout,
                                      config.max_relative_distance)


class ConformerEncoderBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.ff_in = ConformerFeedForward(d, config.ff_dim, config.dropout)
        self.norm_attn = nn.LayerNorm(d)
        self.attn = _relative_attention(config)
        self.conv = ConvolutionModule(d, config.conv_kernel, config.dropout, config.cnn.batch_norm_momentum)
        self.ff_out = ConformerFeedForward(d, config.ff_dim, config.dropout)
        self.norm_out = nn.LayerNorm(d)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        x = x + 0.5 * self.ff_in(x)
        h = self.norm_attn(x)
        x = x + self.dropout(self.attn(h, h, key_valid))
        x = x + self.conv(x, key_valid)
        x = x + 0.5 * self.ff_out(x)
        return self.norm_out(x)


class ConformerDecoderBlock(nn.Module):
    def __init__(self, config: ModelConfig, n_streams: int):
        super().__init__()
        d = config.d_model
        self.ff_in = ConformerFeedForward(d, config.ff_dim, config.dropout)
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = _relative_attention(config)
        self.norm_cross = nn.LayerNorm(d)
        self.cross_attn = nn.ModuleList(_relative_attention(config) for _ in range(n_streams))
        self.conv = ConvolutionModule(d, config.conv_kernel, config.dropout, config.cnn.batch_norm_momentum)
        self.ff_out = ConformerFeedForward(d, config.ff_dim, config.dropout)
        self.norm_out = nn.LayerNorm(d)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor, memories: Sequence[torch.Tensor], memory_valid: Sequence[torch.Tensor | None],
                weights: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff_in(x)
        h = self.norm_self(x)
        x = x + self.dropout(self.self_attn(h, h, None))
        h = self.norm_cross(x)
        fused = interpolate([attn(h, m, v) for attn, m, v in zip(self.cross_attn, memories, memory_valid)], weights)
        x = x + self.dropout(fused)
        x = x + self.conv(x, None)
        x = x + 0.5 * self.ff_out(x)
        return self.norm_out(x)

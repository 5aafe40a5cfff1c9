"""Pre-LN transformer encoder and decoder blocks (paper section 2.1.1).

Multi-head attention with 3 heads of d_k = 128 and a 128-unit output projection, feed-forward
512 ReLU -> 128 linear, dropout 0.1 after each feed-forward and on attention weights and outputs.
The decoder block's cross-attention is duplicated per encoder and interpolated (training/fusion.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from training.attention import MultiHeadAttention
from training.config import ModelConfig
from training.dropout import dropout_layer
from training.fusion import interpolate


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Linear(ff_dim, d_model),
                                 dropout_layer(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerEncoderBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.norm_attn = nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d, config.heads, config.d_head, config.dropout)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = FeedForward(d, config.ff_dim, config.dropout)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        h = self.norm_attn(x)
        x = x + self.dropout(self.attn(h, h, key_valid))
        return x + self.ff(self.norm_ff(x))


class TransformerDecoderBlock(nn.Module):
    def __init__(self, config: ModelConfig, n_streams: int):
        super().__init__()
        d = config.d_model
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, config.heads, config.d_head, config.dropout)
        self.norm_cross = nn.LayerNorm(d)
        self.cross_attn = nn.ModuleList(
            MultiHeadAttention(d, config.heads, config.d_head, config.dropout) for _ in range(n_streams))
        self.norm_ff = nn.LayerNorm(d)
        self.ff = FeedForward(d, config.ff_dim, config.dropout)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor, memories: Sequence[torch.Tensor], memory_valid: Sequence[torch.Tensor | None],
                weights: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(x)
        x = x + self.dropout(self.self_attn(h, h, None))
        h = self.norm_cross(x)
        fused = interpolate([attn(h, m, v) for attn, m, v in zip(self.cross_attn, memories, memory_valid)], weights)
        x = x + self.dropout(fused)
        return x + self.ff(self.norm_ff(x))

"""Multi-head attention as in the paper: `heads` heads each with d_k = d_head (128), concatenated and
projected back to d_model (128) by a final linear layer; dropout on the attention weights.

Masks: `key_valid` (B, Tk) bool, True where a key may be attended to. The attention is written out
(`attend`) rather than calling `F.scaled_dot_product_attention`: the fused kernels have no vmap batching rule
(seeds trained as one stacked model fell back to a per-seed loop on CPU) and the CPU one cannot take the
gradient of the conformer's relative-position bias; at 65 frames the score matrices are tiny anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, dropout_p: float,
           training: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v with dropout on the attention weights; q/k/v (B, H, T, d)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0 and training:  # F.dropout draws a mask even at rate 0
        weights = F.dropout(weights, dropout_p, training)
    return torch.matmul(weights, v)


def key_mask_bias(key_valid: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Tk) bool -> additive (B, 1, 1, Tk) bias: 0 where valid, -inf where padded."""
    if key_valid is None:
        return None
    bias = torch.zeros(key_valid.shape, dtype=dtype, device=key_valid.device)
    bias = bias.masked_fill(~key_valid, float("-inf"))
    return bias[:, None, None, :]


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, d_head: int, dropout: float):
        super().__init__()
        self.heads, self.d_head = heads, d_head
        inner = heads * d_head
        self.q = nn.Linear(d_model, inner)
        self.k = nn.Linear(d_model, inner)
        self.v = nn.Linear(d_model, inner)
        self.out = nn.Linear(inner, d_model)
        self.attn_dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.d_head).transpose(1, 2)  # (B, H, T, d)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(self.q(query)), self.split(self.k(memory)), self.split(self.v(memory))
        bias = key_mask_bias(key_valid, q.dtype)
        o = attend(q, k, v, bias, self.attn_dropout, self.training)
        return self.out(self.merge(o))

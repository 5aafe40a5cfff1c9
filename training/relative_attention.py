"""Transformer-XL style relative-position multi-head attention (Dai et al. 2019), used by the conformer.

score(i, j) = [(q_i + u) . k_j + (q_i + v) . W_r r_{i-j}] / sqrt(d_k)

with learnable per-head biases u, v, a learnable table r of relative-distance embeddings (the paper:
"these (learnable) embeddings, representing relative distances") and its projection W_r. The
position term is computed once per relative distance and moved into place with the relative shift.
Works for self-attention (Tq == Tk) and cross-attention (decoder queries incl. class token vs memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.attention import MultiHeadAttention, key_mask_bias


def relative_shift(x: torch.Tensor, tk: int) -> torch.Tensor:
    """(..., Tq, Tq + Tk - 1) scores per relative distance -> (..., Tq, Tk) scores per key.

    Column c of `x` holds distance d = (Tq - 1) - c. Output [i, j] = x[i, Tq - 1 - i + j] (distance i - j).
    Pad one zero column in front, flatten, drop the first Tq entries and view again: row i then starts
    exactly at its own distance i - 0 (the Transformer-XL trick, generalised to Tq != Tk).
    """
    *lead, tq, r = x.shape
    assert r == tq + tk - 1, (x.shape, tk)
    padded = F.pad(x, (1, 0))  # (..., Tq, R + 1)
    flat = padded.reshape(*lead, tq * (r + 1))[..., tq:]
    return flat.reshape(*lead, tq, r)[..., :tk]


class RelativeMultiHeadAttention(MultiHeadAttention):
    def __init__(self, d_model: int, heads: int, d_head: int, dropout: float, max_distance: int):
        super().__init__(d_model, heads, d_head, dropout)
        self.max_distance = max_distance
        # index m <-> distance m - (max_distance - 1)
        self.relative_table = nn.Parameter(torch.randn(2 * max_distance - 1, d_model) * d_model ** -0.5)
        self.pos = nn.Linear(d_model, heads * d_head, bias=False)  # W_r
        self.bias_u = nn.Parameter(torch.randn(heads, d_head) * d_head ** -0.5)
        self.bias_v = nn.Parameter(torch.randn(heads, d_head) * d_head ** -0.5)

    def relative_embeddings(self, tq: int, tk: int) -> torch.Tensor:
        """(Tq + Tk - 1, d_model) embeddings for distances Tq - 1, ..., -(Tk - 1)."""
        if tq > self.max_distance or tk > self.max_distance:
            raise ValueError(f"sequence lengths {tq}/{tk} exceed max_relative_distance {self.max_distance}")
        idx = torch.arange(tq - 1, -tk, -1, device=self.relative_table.device) + (self.max_distance - 1)
        return self.relative_table[idx]

    def forward(self, query: torch.Tensor, memory: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        tq, tk = query.shape[1], memory.shape[1]
        q, k, v = self.split(self.q(query)), self.split(self.k(memory)), self.split(self.v(memory))
        p = self.split(self.pos(self.relative_embeddings(tq, tk).to(query.dtype)).unsqueeze(0))  # (1, H, R, d)
        bd = torch.matmul(q + self.bias_v[:, None].to(q.dtype), p.transpose(-1, -2))  # (B, H, Tq, R)
        bias = relative_shift(bd, tk) / math.sqrt(self.d_head)
        mask = key_mask_bias(key_valid, bias.dtype)
        if mask is not None:
            bias = bias + mask
        # The attention adds the bias to (q + u) k^T / sqrt(d) before the softmax: exactly the TXL score (fused,
        # the bias is the kernel's float attn_mask, and its gradient reaches the table, W_r and v).
        o = self.attention(q + self.bias_u[:, None].to(q.dtype), k, v, bias)
        return self.out(self.merge(o))

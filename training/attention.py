"""Multi-head attention as in the paper: `heads` heads each with d_k = d_head (128), concatenated and
projected back to d_model (128) by a final linear layer; dropout on the attention weights.

Masks: `key_valid` (B, Tk) bool, True where a key may be attended to. Two spellings of the same arithmetic:
`F.scaled_dot_product_attention` (fused; the default) and `attend`, written out. Which one a module runs is its
`fused` flag, set by whoever knows how the model is called (training/train.prepare_group):
- fused wherever it is one kernel: one seed (CPU or CUDA), and stacked seeds on CUDA, whose flash / efficient /
  cuDNN kernels fold vmap's seed axis into the batch. It reads q/k/v as the strided (B, H, T, d) views of the
  projections and writes its output so that merging the heads back is a view: no layout copies around attention
  (measured on an H100, the written-out path's strided bf16 copies and their backward took 2.84 ms a step);
- written out for stacked seeds on the CPU: torch 2.11 has no CPU batching rule for the fused kernel with a mask
  (vmap falls back to a per-seed loop, with a warning);
- written out on the CPU while attention dropout is on: the CPU's fused kernel takes no dropout, and its fallback
  (`_scaled_dot_product_attention_math`) spends more ops than `attend` (1350 against 1140 per step counted).
Both give the same values and gradients (the conformer's relative bias included; tests/training/test_sdpa.py).
Keys that are all invalid (never produced by training/data.py, which marks a missing stream's frames all valid)
give NaN written out and zeros fused.
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
        self.fused = True  # F.scaled_dot_product_attention, or `attend` (module docstring: which, and why)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.d_head).transpose(1, 2)  # (B, H, T, d)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + bias) v, fused or written out (`self.fused`); q/k/v (B, H, T, d)."""
        p = self.attn_dropout if self.training else 0.0
        if self.fused and (q.is_cuda or p == 0):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return attend(q, k, v, bias, self.attn_dropout, self.training)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(self.q(query)), self.split(self.k(memory)), self.split(self.v(memory))
        bias = key_mask_bias(key_valid, q.dtype)
        return self.out(self.merge(self.attention(q, k, v, bias)))

"""Relative-position attention against a slow reference with explicit loops over query/key positions."""

from __future__ import annotations

import math

import pytest
import torch

from training.relative_attention import RelativeMultiHeadAttention, relative_shift


def slow_reference(attn: RelativeMultiHeadAttention, query, memory, key_valid=None):
    """score(i, j) = [(q_i + u) . k_j + (q_i + v) . W_r r_{i-j}] / sqrt(d), looped over i and j."""
    b, tq, _ = query.shape
    tk = memory.shape[1]
    h, d = attn.heads, attn.d_head
    q = attn.q(query).view(b, tq, h, d)
    k = attn.k(memory).view(b, tk, h, d)
    v = attn.v(memory).view(b, tk, h, d)
    out = torch.zeros(b, tq, h, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(tq):
                scores = torch.zeros(tk, dtype=torch.float64)
                for j in range(tk):
                    r = attn.relative_table[(i - j) + attn.max_distance - 1]
                    p = attn.pos(r).view(h, d)[hi]
                    s = (q[bi, i, hi] + attn.bias_u[hi]) @ k[bi, j, hi] + (q[bi, i, hi] + attn.bias_v[hi]) @ p
                    scores[j] = s / math.sqrt(d)
                    if key_valid is not None and not key_valid[bi, j]:
                        scores[j] = float("-inf")
                weights = torch.softmax(scores, dim=0)
                out[bi, i, hi] = (weights[:, None] * v[bi, :, hi].double()).sum(0)
    return attn.out(out.reshape(b, tq, h * d).float())


def test_relative_shift_places_each_distance():
    tq, tk = 4, 6
    # x[i, c] = distance encoded by column c: d = tq - 1 - c (the same for every row).
    x = (tq - 1 - torch.arange(tq + tk - 1)).float().expand(tq, -1)
    shifted = relative_shift(x, tk)
    expected = torch.arange(tq)[:, None] - torch.arange(tk)[None, :]
    assert torch.equal(shifted, expected.float())


@pytest.mark.parametrize("tq,tk", [(5, 5), (6, 4), (3, 7)])
def test_relative_attention_matches_slow_reference(tq, tk):
    torch.manual_seed(0)
    attn = RelativeMultiHeadAttention(d_model=8, heads=3, d_head=4, dropout=0.1, max_distance=10).eval()
    query, memory = torch.randn(2, tq, 8), torch.randn(2, tk, 8)
    valid = torch.ones(2, tk, dtype=torch.bool)
    valid[1, -2:] = False
    with torch.no_grad():
        fast = attn(query, memory, valid)
        slow = slow_reference(attn, query, memory, valid)
        assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
        if tq == tk:
            assert torch.allclose(attn(query, query), slow_reference(attn, query, query), atol=1e-5)


def test_relative_attention_rejects_too_long_sequences():
    attn = RelativeMultiHeadAttention(8, 1, 8, 0.0, max_distance=4)
    with pytest.raises(ValueError, match="max_relative_distance"):
        attn(torch.randn(1, 5, 8), torch.randn(1, 5, 8))

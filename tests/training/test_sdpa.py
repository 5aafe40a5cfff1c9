"""The fused attention (F.scaled_dot_product_attention) against the written-out one (`attend`): same values and
gradients, with key masks and the conformer's relative bias (its table, W_r, u and v get the same gradients)."""

from __future__ import annotations

import copy

import pytest
import torch

from training.attention import MultiHeadAttention
from training.relative_attention import RelativeMultiHeadAttention


def _pair(relative: bool, cross: bool):
    torch.manual_seed(0)
    if relative:
        fused = RelativeMultiHeadAttention(d_model=8, heads=3, d_head=4, dropout=0.1, max_distance=10)
    else:
        fused = MultiHeadAttention(d_model=8, heads=3, d_head=4, dropout=0.1)
    fused = fused.double().eval()  # eval: no dropout, whose random draws differ between the two kernels
    written = copy.deepcopy(fused)
    written.fused = False
    assert fused.fused
    tq, tk = (5, 7) if cross else (6, 6)
    query = torch.randn(3, tq, 8, dtype=torch.float64)
    memory = torch.randn(3, tk, 8, dtype=torch.float64) if cross else query
    valid = torch.ones(3, tk, dtype=torch.bool)
    valid[1, -2:] = False
    valid[2, ::2] = False
    return fused, written, query, memory, valid


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "key_mask"])
def test_fused_attention_equals_written_out_in_values_and_gradients(relative, cross, masked):
    fused, written, query, memory, valid = _pair(relative, cross)
    outs, grads = [], []
    for module in (fused, written):
        q = query.clone().requires_grad_(True)
        m = memory.clone().requires_grad_(True) if cross else q
        out = module(q, m, valid if masked else None)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append({"query": q.grad, **({"memory": m.grad} if cross else {}),
                      **{n: p.grad for n, p in module.named_parameters()}})
    assert torch.allclose(outs[0], outs[1], atol=1e-12, rtol=1e-10)
    names = set(grads[0])
    if relative:
        assert {"relative_table", "pos.weight", "bias_u", "bias_v"} <= names
    for name in names:
        a, b = grads[0][name], grads[1][name]
        assert a is not None and b is not None, name
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10), (name, (a - b).abs().max())
    if relative:
        assert grads[0]["relative_table"].abs().sum() > 0  # the bias really is differentiated through


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_all_invalid_keys_give_zeros_fused_and_nan_written_out(relative):
    """No clip of training/data.py has all keys invalid (a missing stream's frames are all marked valid); if one
    did, the fused kernel returns zeros where the written-out softmax returns NaN. The other clips are unaffected."""
    fused, written, query, memory, valid = _pair(relative, cross=True)
    valid[0] = False
    with torch.no_grad():
        a, b = fused(query, memory, valid), written(query, memory, valid)
    assert torch.isfinite(a).all() and torch.isnan(b[0]).all()
    assert torch.allclose(a[1:], b[1:], atol=1e-12)

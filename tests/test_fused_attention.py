"""Window attention: the fused path (F.scaled_dot_product_attention), the explicit path (the default on CPU) and the
computation written out as it was before either, forward and backward."""
from __future__ import annotations

import pytest
import torch

from smitunet.networks.swin_blocks import WindowAttention, relative_position_index_on, shifted_window_mask


def explicit_attention(attn: WindowAttention, x, window, mask):
    """The computation the fused path replaced, written out."""
    bw, n, c = x.shape
    qkv = attn.qkv(x).reshape(bw, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1)
    index = relative_position_index_on(window, attn.window, str(x.device))
    scores = scores + attn.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        scores = (scores.view(bw // nw, nw, attn.num_heads, n, n) + mask[None, :, None]).view(-1, attn.num_heads, n, n)
    return attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


@pytest.mark.parametrize("window,padded,shift", [((2, 3, 4), (4, 6, 8), (1, 1, 2)), ((2, 3, 4), None, None),
                                                 ((2, 3, 4), (2, 6, 8), (0, 1, 2)), ((4, 4), (8, 8), (2, 2))])
@pytest.mark.parametrize("request_fused", [True, False])
def test_fused_attention_equals_the_explicit_one_forward_and_backward(window, padded, shift, request_fused):
    torch.manual_seed(0)
    fused = WindowAttention(24, 3, window, qkv_bias=True).double()
    fused.fused = request_fused
    with torch.no_grad():  # a bias table far from zero, so a wrong index or a dropped mask shows
        fused.relative_position_bias_table.normal_(0, 1)
    mask = None if padded is None else shifted_window_mask(padded, window, shift).double()
    images = 2
    windows = images * (1 if mask is None else mask.shape[0])
    x = torch.randn(windows, torch.tensor(window).prod().item(), 24, dtype=torch.float64)
    outs, grads = [], []
    for fn in (lambda: fused(x, window, mask), lambda: explicit_attention(fused, x, window, mask)):
        fused.zero_grad()
        out = fn()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in fused.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-10, msg=name)
    if mask is not None:  # the mask matters here: without it the output differs
        assert not torch.allclose(outs[0], explicit_attention(fused, x, window, None).detach())


@pytest.mark.parametrize("request_fused", [True, False])
def test_attention_under_bfloat16_autocast_stays_close(request_fused):
    torch.manual_seed(0)
    attn = WindowAttention(24, 3, (2, 3, 4), qkv_bias=True)
    attn.fused = request_fused
    mask = shifted_window_mask((4, 6, 8), (2, 3, 4), (1, 1, 2))
    x = torch.randn(2 * mask.shape[0], 24, 24)
    reference = explicit_attention(attn, x, (2, 3, 4), mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, (2, 3, 4), mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.detach(), rtol=0.05, atol=0.05)

"""Swin building blocks (3D, or 2D for the ``2d`` configuration) with the official SMIT parameter names.

Tensors inside the encoder are channel-last ``(B, D, H, W, C)`` where D, H, W are the (z, y, x) axes of the
input; in 2D ``(B, H, W, C)`` (y, x). The number of spatial axes follows the window's length. Parameter names and shapes follow the SMIT pretraining checkpoint (``patch_embed.proj``,
``blocks.{j}.attn.relative_position_bias_table``, ``downsample.reduction`` ...), so official weights load 1:1.

Windows are clipped per axis where a feature map is not larger than the window (shift disabled on that
axis, as in Swin/MONAI). The relative-position table keeps the configured window's shape and a clipped
window indexes into it with its own (smaller) offsets, so pretrained tables keep their meaning.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# Explicit permutations rather than movedim(1, -1) / movedim(-1, 1): torch's ONNX exporter writes movedim with a
# negative axis into the Transpose permutation, which ONNX Runtime rejects (smitunet_export).
def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, *spatial, C)."""
    return x.permute(0, *range(2, x.ndim), 1)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, *spatial, C) -> (B, C, *spatial)."""
    return x.permute(0, x.ndim - 1, *range(1, x.ndim - 1))

# SMIT's PatchMerging concatenates the 8 sub-voxels in this order (offsets along D, H, W).
SMIT_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))
# MONAI's PatchMerging up to v0.9 (the SwinUNETR self-supervised release, model_swinvit.pt, was trained with it): the
# 6th and 7th slices repeat the 3rd and 4th, so sub-voxels 110 and 011 are never seen. Weights trained this way
# only reproduce their features with the same gather; no permutation of SMIT's order is equivalent.
MONAI_LEGACY_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))
MERGE_ORDERS = {"smit": SMIT_MERGE_ORDER, "monai_legacy": MONAI_LEGACY_MERGE_ORDER}


@functools.lru_cache(maxsize=64)
def relative_position_index(window: tuple[int, ...], table_window: tuple[int, ...]) -> torch.Tensor:
    """Index ``(n, n)`` into a ``prod(2*table_window-1)``-row bias table for a (possibly smaller) window."""
    # Explicit CPU tensors: the cache must never hold tensors created under a meta/cuda default device.
    axes = [torch.arange(w, device="cpu") for w in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([t - 1 for t in table_window], device="cpu")
    index = torch.zeros(rel.shape[:2], dtype=rel.dtype, device="cpu")
    for axis, t in enumerate(table_window):  # row-major over the table's (2t-1)-sized offset axes
        index = index * (2 * t - 1) + rel[..., axis]
    return index


def effective_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]):
    """Clip window/shift per axis where the feature map is not larger than the window (Swin rule)."""
    win = tuple(s if s <= w else w for s, w in zip(size, window))
    sh = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    return win, sh


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *spatial, C) -> (B * num_windows, prod(window), C), windows in raster order."""
    b, *spatial, c = x.shape
    n = len(window)
    shape = [b] + [v for s, w in zip(spatial, window) for v in (s // w, w)] + [c]
    order = [0] + [1 + 2 * a for a in range(n)] + [2 + 2 * a for a in range(n)] + [2 * n + 1]
    return x.view(shape).permute(order).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], b: int, *spatial: int) -> torch.Tensor:
    n = len(window)
    x = windows.view(b, *[s // w for s, w in zip(spatial, window)], *window, -1)
    order = [0] + [v for a in range(n) for v in (1 + a, 1 + n + a)] + [2 * n + 1]
    return x.permute(order).reshape(b, *spatial, -1)


@functools.lru_cache(maxsize=64)
def _shift_region_ids(padded: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> torch.Tensor:
    img = torch.zeros(padded, device="cpu")
    axis_slices = []
    for win, sh in zip(window, shift):
        axis_slices.append((slice(0, -win), slice(-win, -sh), slice(-sh, None)) if sh > 0 else (slice(None),))
    for count, region in enumerate(itertools.product(*axis_slices)):
        img[region] = count
    return img


@functools.lru_cache(maxsize=64)
def shifted_window_mask(padded: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...],
                        device: str = "cpu") -> torch.Tensor:
    """Additive mask ``(num_windows, n, n)``: -100 between tokens from different regions after the roll."""
    ids = _shift_region_ids(tuple(padded), tuple(window), tuple(shift))
    ids = window_partition(ids[None, ..., None], window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0).to(device)


@functools.lru_cache(maxsize=64)
def relative_position_index_on(window: tuple[int, ...], table_window: tuple[int, ...],
                               device: str) -> torch.Tensor:
    return relative_position_index(window, table_window).reshape(-1).to(device)


class WindowAttention(nn.Module):
    """Multi-head self-attention in a 3D (or 2D) window with a relative-position bias (SMIT/Swin names)."""

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.window = tuple(window)
        self.scale = (dim // num_heads) ** -0.5
        rows = math.prod(2 * w - 1 for w in self.window)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Stored only so the state_dict equals the official one; forward rebuilds the index for its window.
        self.register_buffer("relative_position_index", relative_position_index(self.window, self.window).clone())
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    # None: PyTorch's fused kernel on CUDA, the explicit product on the CPU, where the fused one measured 1.06x
    # (training) and 1.41x (inference) the explicit time at smit_*'s 4x4x4 windows, 0.94x/0.95x at 7x7x7
    # (benchmarks/attention.py). Both compute the same values (tests/test_fused_attention.py); True/False force one.
    fused: bool | None = None

    def forward(self, x: torch.Tensor, window: tuple[int, ...], mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        index = relative_position_index_on(window, self.window, str(x.device))
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1).to(q.dtype)
        nw = 1 if mask is None else mask.shape[0]  # windows per image: masks broadcast over the images
        # The relative-position bias and the shifted-window mask are one additive mask (heads, n, n) per window.
        additive = bias if mask is None else bias + mask.to(q.dtype)[:, None]
        shape = (bw // nw, nw, self.num_heads, n, -1)
        q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
        if self.fused if self.fused is not None else x.is_cuda:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=self.scale)
        else:
            out = ((q * self.scale) @ k.transpose(-2, -1) + additive).softmax(dim=-1) @ v
        return self.proj(out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at inference or with rate 0)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * noise / keep


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: Sequence[int], shifted: bool, qkv_bias: bool,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, window: tuple[int, ...], shift: tuple[int, ...]) -> torch.Tensor:
        b, *size, c = x.shape
        axes = tuple(range(1, len(size) + 1))
        shortcut = x
        x = self.norm1(x)
        pads = [(-s) % win for s, win in zip(size, window)]
        if any(pads):
            x = F.pad(x, _pad_spec(pads, channel_last=True))
        padded = tuple(s + p for s, p in zip(size, pads))
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=axes)
            mask = shifted_window_mask(padded, window, shift, str(x.device))
        windows = self.attn(window_partition(x, window), window, mask)
        x = window_reverse(windows, window, b, *padded)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=axes)
        x = x[(slice(None), *[slice(0, s) for s in size])].contiguous()
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _pad_spec(pads: Sequence[int], channel_last: bool) -> tuple[int, ...]:
    """F.pad's argument (last axis first) padding each spatial axis at its end."""
    spec = [v for p in reversed(pads) for v in (0, p)]
    return tuple([0, 0] + spec if channel_last else spec)


class PatchEmbed(nn.Module):
    """Conv 2x2x2 (2x2 in 2D; stride per axis, a stride-1 axis pads one voxel at the end) + optional LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int, stride: Sequence[int], norm: bool):
        super().__init__()
        self.stride = tuple(int(s) for s in stride)
        conv = nn.Conv3d if len(self.stride) == 3 else nn.Conv2d
        self.proj = conv(in_channels, embed_dim, kernel_size=2, stride=self.stride)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pads = [1 if s == 1 else (-n) % 2 for n, s in zip(size, self.stride)]
        if any(pads):
            x = F.pad(x, _pad_spec(pads, channel_last=False))
        x = channels_last(self.proj(x))
        return self.norm(x) if self.norm is not None else x


class PatchMerging(nn.Module):
    """SMIT merge: LayerNorm(8C) then Linear(8C -> 2C) over the 8 sub-voxels in SMIT's order.

    Along an axis with stride 1 both offsets take the same voxel, which keeps the pretrained Linear's shape
    (it equals summing the two weight blocks) so official weights load for any per-axis plan. A 2D merge is
    the 3D one with no depth axis: the depth offset is dropped like a stride-1 axis's, so the 2D network keeps
    the 3D checkpoint's merge tensors exactly (it equals the 3D merge of a slice repeated along depth).
    """

    def __init__(self, dim: int, stride: Sequence[int], order: str = "smit"):
        super().__init__()
        self.stride = tuple(int(s) for s in stride)
        self.order = MERGE_ORDERS[order]
        self.offsets = tuple(o[3 - len(self.stride):] for o in self.order)
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[1:-1]
        pads = [n % 2 if s == 2 else 0 for n, s in zip(size, self.stride)]
        if any(pads):
            x = F.pad(x, _pad_spec(pads, channel_last=True))
        parts = [x[(slice(None), *[slice(o * (s - 1), None, s) for o, s in zip(offset, self.stride)])]
                 for offset in self.offsets]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating regular/shifted windows, then a PatchMerging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Sequence[int], qkv_bias: bool,
                 merge_stride: Sequence[int], mlp_ratio: float = 4.0, drop_paths: Sequence[float] = (),
                 merge_order: str = "smit"):
        super().__init__()
        self.window = tuple(window)
        rates = list(drop_paths) or [0.0] * depth
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, window, shifted=j % 2 == 1, qkv_bias=qkv_bias,
                                              mlp_ratio=mlp_ratio, drop_path=rates[j]) for j in range(depth))
        self.downsample = PatchMerging(dim, merge_stride, merge_order)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[1:-1]
        half = tuple(w // 2 for w in self.window)
        for block in self.blocks:
            window, shift = effective_window(size, self.window, half if block.shifted else (0,) * len(size))
            x = block(x, window, shift)
        return x

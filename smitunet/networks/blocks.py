"""Convolutional blocks shared by the Swin U-Net decoder and the plain convolutional U-Net (3D, or 2D with
``dims=2`` for the ``2d`` configuration)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch")
SPATIAL_DIMS = (2, 3)


# -- CPU fast path ----------------------------------------------------------------------------------------------
# Channels-last 3D convolutions were tried and dropped: on a quiet 2-core EPYC they made a training step 1.03-1.08x
# slower (benchmarks/results/cpu_layers_20261204-14*.md).
class _InstanceNormByGroupNorm:
    """Instance norm is group norm with one channel per group; on the CPU the group-norm kernel is the faster one
    (a whole inference tile of smit_small: 0.94-0.95x, benchmarks/cpu_layers.py). Same parameters and state-dict
    keys as the torch layer, equal up to float rounding (tests/test_cpu_layers.py). Tracing and ONNX export keep
    the plain op, so exported graphs hold a standard InstanceNormalization."""

    cpu_fast_path = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.cpu_fast_path and x.device.type == "cpu" and not torch.jit.is_tracing()
                and not torch.onnx.is_in_onnx_export() and not self.track_running_stats
                and x.dim() == self._get_no_batch_dim() + 1):
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


class InstanceNorm2d(_InstanceNormByGroupNorm, nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_InstanceNormByGroupNorm, nn.InstanceNorm3d):
    pass


def plain_layers(net: nn.Module) -> nn.Module:
    """Switch the CPU fast path of ``net`` off (the reference the benchmarks and tests compare against)."""
    for module in net.modules():
        if hasattr(module, "cpu_fast_path"):
            module.cpu_fast_path = False
    return net


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {("instance", 2): InstanceNorm2d, ("instance", 3): InstanceNorm3d,
         ("batch", 2): nn.BatchNorm2d, ("batch", 3): nn.BatchNorm3d}


def conv(dims: int) -> type[nn.Module]:
    return _CONV[dims]


def conv_transpose(dims: int) -> type[nn.Module]:
    return _CONV_TRANSPOSE[dims]


def norm_layer(kind: str, channels: int, dims: int = 3) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
    layer = _NORM[(kind, dims)]
    return layer(channels, affine=True) if kind == "instance" else layer(channels)


class ConvNormAct(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, norm: str, stride: Sequence[int] | int = 1, dims: int = 3):
        super().__init__(conv(dims)(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                         norm_layer(norm, out_ch, dims), nn.LeakyReLU(0.01, inplace=True))


class ResBlock(nn.Module):
    """UNETR-style residual block: conv-norm-act-conv-norm (+ 1x1 projection when widths differ), act."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, dims: int = 3):
        super().__init__()
        self.conv1 = conv(dims)(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = norm_layer(norm, out_ch, dims)
        self.conv2 = conv(dims)(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, out_ch, dims)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.skip = None
        if in_ch != out_ch:
            self.skip = nn.Sequential(conv(dims)(in_ch, out_ch, 1, bias=False), norm_layer(norm, out_ch, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.skip is None else self.skip(x)
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + residual)


class Projection(nn.Sequential):
    """1x1 convolution, norm, activation: carries a feature to the decoder's width without processing it."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, dims: int = 3):
        super().__init__(conv(dims)(in_ch, out_ch, 1, bias=False), norm_layer(norm, out_ch, dims),
                         nn.LeakyReLU(0.01, inplace=True))


class UpBlock(nn.Module):
    """Transposed conv by the per-axis stride, concatenate the skip, residual block."""

    def __init__(self, in_ch: int, out_ch: int, stride: Sequence[int], norm: str):
        super().__init__()
        stride = tuple(int(s) for s in stride)
        self.up = conv_transpose(len(stride))(in_ch, out_ch, kernel_size=stride, stride=stride, bias=False)
        self.block = ResBlock(2 * out_ch, out_ch, norm, len(stride))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


def cumulative_strides(strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Total per-axis stride at each resolution level: level 0 = input, level k = prod(strides[:k])."""
    levels = [[1] * len(strides[0])] if strides else [[1, 1, 1]]
    for s in strides:
        levels.append([a * int(b) for a, b in zip(levels[-1], s)])
    return levels

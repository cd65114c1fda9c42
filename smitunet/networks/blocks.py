"""Convolutional blocks shared by the Swin U-Net decoder and the plain convolutional U-Net."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

NORMS = ("instance", "batch")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


class ConvNormAct(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, norm: str, stride: Sequence[int] | int = 1):
        super().__init__(nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                         norm_layer(norm, out_ch), nn.LeakyReLU(0.01, inplace=True))


class ResBlock(nn.Module):
    """UNETR-style residual block: conv-norm-act-conv-norm (+ 1x1 projection when widths differ), act."""

    def __init__(self, in_ch: int, out_ch: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = norm_layer(norm, out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, out_ch)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.skip = None
        if in_ch != out_ch:
            self.skip = nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, bias=False), norm_layer(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.skip is None else self.skip(x)
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + residual)


class Projection(nn.Sequential):
    """1x1 convolution, norm, activation: carries a feature to the decoder's width without processing it."""

    def __init__(self, in_ch: int, out_ch: int, norm: str):
        super().__init__(nn.Conv3d(in_ch, out_ch, 1, bias=False), norm_layer(norm, out_ch),
                         nn.LeakyReLU(0.01, inplace=True))


class UpBlock(nn.Module):
    """Transposed conv by the per-axis stride, concatenate the skip, residual block."""

    def __init__(self, in_ch: int, out_ch: int, stride: Sequence[int], norm: str):
        super().__init__()
        stride = tuple(int(s) for s in stride)
        self.up = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=stride, stride=stride, bias=False)
        self.block = ResBlock(2 * out_ch, out_ch, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


def cumulative_strides(strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Total per-axis stride at each resolution level: level 0 = input, level k = prod(strides[:k])."""
    levels = [[1, 1, 1]]
    for s in strides:
        levels.append([a * int(b) for a, b in zip(levels[-1], s)])
    return levels

"""Plain convolutional U-Net (nnU-Net-like topology) built from the same plan kwargs as the Swin presets.

Level 0 runs at full resolution; each entry of ``strides`` adds a level whose first convolution downsamples
by that per-axis stride (so the bottleneck has the same total stride as the Swin network of the same plan).
Widths ``base_features * 2**level`` capped at ``max_features``; two conv-norm-LeakyReLU per level.
Deep supervision heads on every decoder level, full resolution first. ``spatial_dims=2``: the same on slices.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from smitunet.networks.blocks import ConvNormAct, conv, conv_transpose, cumulative_strides


class ConvUNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, patch_size: Sequence[int],
                 strides: Sequence[Sequence[int]], num_stages: int | None = None, base_features: int = 32,
                 max_features: int = 320, n_conv_per_stage: int = 2, norm: str = "instance",
                 deep_supervision: bool = False, spatial_dims: int = 3):
        super().__init__()
        dims = self.spatial_dims = int(spatial_dims)
        self.patch_size = [int(p) for p in patch_size]
        self.strides = [[int(s) for s in st] for st in strides]
        self.deep_supervision = deep_supervision
        levels = len(self.strides) + 1
        widths = [min(base_features * 2 ** k, max_features) for k in range(levels)]
        self.down = nn.ModuleList()
        for k in range(levels):
            stride = 1 if k == 0 else self.strides[k - 1]
            convs = [ConvNormAct(in_channels if k == 0 else widths[k - 1], widths[k], norm, stride, dims)]
            convs += [ConvNormAct(widths[k], widths[k], norm, dims=dims) for _ in range(n_conv_per_stage - 1)]
            self.down.append(nn.Sequential(*convs))
        self.up = nn.ModuleList(conv_transpose(dims)(widths[k + 1], widths[k], self.strides[k], self.strides[k],
                                                     bias=False) for k in range(levels - 1))
        self.decode = nn.ModuleList(nn.Sequential(ConvNormAct(2 * widths[k], widths[k], norm, dims=dims),
                                                  *[ConvNormAct(widths[k], widths[k], norm, dims=dims)
                                                    for _ in range(n_conv_per_stage - 1)])
                                    for k in range(levels - 1))
        self.heads = nn.ModuleList(conv(dims)(widths[k], num_classes, 1) for k in range(levels - 1))

    def deep_supervision_scales(self) -> list[list[float]]:
        levels = cumulative_strides(self.strides)
        return [[1.0 / s for s in levels[k]] for k in range(len(self.heads))]

    def forward(self, x: torch.Tensor):
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        y = skips.pop()
        outputs = []
        for k in range(len(self.up) - 1, -1, -1):
            y = self.decode[k](torch.cat([self.up[k](y), skips[k]], dim=1))
            if self.deep_supervision or k == 0:
                outputs.append(self.heads[k](y))
        outputs.reverse()
        return outputs if self.deep_supervision else outputs[0]

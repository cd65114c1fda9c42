"""SMIT Swin U-Net: the SMIT Swin encoder with a lean UNETR-style convolutional decoder.

Resolution levels: level 0 is the input, level k (k = 1..num_stages+1) is the encoder feature k-1 at total
stride ``prod(strides[:k])``. Decoder widths: ``feature_size`` at levels 0 and 1, doubling per level after
that, so the full-resolution convolutions stay narrow (this is a CPU product).

Deep supervision outputs come from decoder levels 0..num_stages-1 (full resolution first); the coarsest
decoder level (the one next to the bottleneck) gets no head.

``spatial_dims=2``: the same network on slices ``(B, C, y, x)`` (the ``2d`` configuration); patch and strides are
then per (y, x).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from smitunet.networks.blocks import Projection, ResBlock, UpBlock, conv, cumulative_strides
from smitunet.networks.swin_encoder import SmitSwinEncoder


DECODERS = ("res", "light")


class SmitUNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, patch_size: Sequence[int], embed_dim: int,
                 depths: Sequence[int], num_heads: Sequence[int], window_size: int | Sequence[int],
                 qkv_bias: bool, num_stages: int, strides: Sequence[Sequence[int]], feature_size: int,
                 norm: str = "instance", deep_supervision: bool = False, patch_norm: bool = True,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, merge_order: str = "smit",
                 decoder: str = "res", spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        self.patch_size = [int(p) for p in patch_size]
        self.strides = [[int(s) for s in st] for st in strides]
        self.num_stages = num_stages
        self.deep_supervision = deep_supervision
        self.encoder = SmitSwinEncoder(in_channels, embed_dim, depths, num_heads, window_size, qkv_bias,
                                       num_stages, self.strides, patch_norm, mlp_ratio, drop_path_rate,
                                       merge_order, self.spatial_dims)
        widths = [feature_size] + [feature_size * 2 ** k for k in range(num_stages + 1)]
        enc_channels = self.encoder.channels
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        # "res": residual blocks on the raw input (a full-resolution stem) and on every encoder feature, as UNETR;
        # "light": the stem and the skips are 1x1 projections, so the encoder's features carry the representation
        # and the decoder only merges them (fewer full-resolution convolutions, too).
        skip = ResBlock if decoder == "res" else Projection
        dims = self.spatial_dims
        self.input_block = skip(in_channels, widths[0], norm, dims)
        # skip_blocks[k] maps encoder feature k to decoder level k+1 (the last one is the bottleneck).
        self.skip_blocks = nn.ModuleList(skip(enc_channels[k], widths[k + 1], norm, dims)
                                         for k in range(num_stages + 1))
        # up_blocks[k] brings level k+1 to level k.
        self.up_blocks = nn.ModuleList(UpBlock(widths[k + 1], widths[k], self.strides[k], norm)
                                       for k in range(num_stages + 1))
        self.heads = nn.ModuleList(conv(dims)(widths[k], num_classes, 1) for k in range(max(num_stages, 1)))

    def deep_supervision_scales(self) -> list[list[float]]:
        levels = cumulative_strides(self.strides)
        return [[1.0 / s for s in levels[k]] for k in range(len(self.heads))]

    def forward(self, x: torch.Tensor):
        features = self.encoder(x)
        y = self.skip_blocks[-1](features[-1])
        outputs = []
        for k in range(self.num_stages, -1, -1):
            skip = self.input_block(x) if k == 0 else self.skip_blocks[k - 1](features[k - 1])
            y = self.up_blocks[k](y, skip)
            if k < len(self.heads) and (self.deep_supervision or k == 0):
                outputs.append(self.heads[k](y))
        outputs.reverse()
        return outputs if self.deep_supervision else outputs[0]

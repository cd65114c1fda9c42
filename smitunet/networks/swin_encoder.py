"""The SMIT Swin encoder: state_dict keys/shapes equal the official SMIT pretraining checkpoint.

Official layout (smit_small, 4 stages): ``mask_token``, ``patch_embed.proj/norm``,
``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.{norm,reduction}`` for every i (including the last),
``norm{i}`` for every stage.

Forward order (as in SMIT's SwinTransformer): patch embedding (+LayerNorm) -> optional mask-token
replacement -> for each stage i: Swin blocks -> ``norm{i}`` applied to the blocks' output gives stage
feature i -> PatchMerging of the *un-normalized* blocks' output feeds stage i+1. The last stage's merge output
(no norm) is the bottleneck feature.

``spatial_dims=2`` (the ``2d`` configuration) builds the same encoder on slices: a 2x2 patch embedding, 2D
windows and relative-position tables; every other tensor keeps its 3D shape (see ``PatchMerging``), so a 3D
checkpoint adapts to it by value (``checkpoint_adapter``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from smitunet.networks.swin_blocks import PatchEmbed, SwinLayer, channels_first


class SmitSwinEncoder(nn.Module):
    """``forward(x, mask=None)`` returns ``num_stages + 1`` channel-first features:

    - ``i < num_stages``: ``norm{i}(blocks of layer i)``, channels ``embed_dim * 2**i``, total stride
      ``prod(strides[:i+1])`` (feature 0 is at the patch-embedding resolution);
    - ``num_stages``: the last layer's PatchMerging output, channels ``embed_dim * 2**num_stages``, total
      stride ``prod(strides)``.

    ``mask``: bool ``(B, num_patch_tokens)`` in the patch grid's (D, H, W) raster order; True tokens are
    replaced by ``mask_token`` before the first stage (SMIT masked-image pretraining).

    ``spatial_dims``: 3, or 2 for slices ``(B, C, y, x)`` (strides are then pairs).
    """

    def __init__(self, in_channels: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 window_size: int | Sequence[int], qkv_bias: bool, num_stages: int,
                 strides: Sequence[Sequence[int]], patch_norm: bool = True, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, merge_order: str = "smit", spatial_dims: int = 3):
        super().__init__()
        window = (window_size,) * spatial_dims if isinstance(window_size, int) else tuple(window_size)
        self.spatial_dims = spatial_dims
        self.num_stages = num_stages
        self.embed_dim = embed_dim
        self.channels = [embed_dim * 2 ** i for i in range(num_stages + 1)]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = PatchEmbed(in_channels, embed_dim, strides[0], norm=patch_norm)
        total_blocks = sum(depths[:num_stages])
        rates = [drop_path_rate * j / max(total_blocks - 1, 1) for j in range(total_blocks)]
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            start = sum(depths[:i])
            self.layers.append(SwinLayer(self.channels[i], depths[i], num_heads[i], window, qkv_bias,
                                         merge_stride=strides[i + 1], mlp_ratio=mlp_ratio,
                                         drop_paths=rates[start:start + depths[i]], merge_order=merge_order))
        for i in range(num_stages):
            self.add_module(f"norm{i}", nn.LayerNorm(self.channels[i]))
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x)
        if mask is not None:
            b, *grid, c = x.shape
            tokens = math.prod(grid)
            if mask.shape != (b, tokens):
                raise ValueError(f"mask must be (B, {tokens}) for a {'x'.join(map(str, grid))} patch grid, "
                                 f"got {tuple(mask.shape)}")
            x = torch.where(mask.view(b, *grid, 1), self.mask_token.to(x.dtype).view(1, *[1] * len(grid), c), x)
        return x

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = self.embed(x, mask)
        features = []
        for i, layer in enumerate(self.layers):
            x = layer.run_blocks(x)
            features.append(channels_first(getattr(self, f"norm{i}")(x)).contiguous())
            x = layer.downsample(x)
        features.append(channels_first(x).contiguous())
        return features

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """Raw (un-normalized) channel-first tensors: patch embedding, each layer's blocks, each merge.

        Used to compare with other implementations (MONAI returns LayerNorm(merge outputs)).
        """
        x = self.embed(x)
        out: dict = {"embed": channels_first(x), "blocks": [], "merged": []}
        for layer in self.layers:
            x = layer.run_blocks(x)
            out["blocks"].append(channels_first(x))
            x = layer.downsample(x)
            out["merged"].append(channels_first(x))
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

"""Pretraining heads: a light reconstruction head, DINO/iBOT-style projection heads and SMART's class attention.

They live only in the pretraining model; ``smit.pt`` exports the encoder alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def pixel_shuffle_3d(x: torch.Tensor, out_channels: int, factor: Sequence[int]) -> torch.Tensor:
    """``(B, C * fz * fy * fx, d, h, w)`` -> ``(B, C, d * fz, h * fy, w * fx)`` (anisotropic factors allowed)."""
    b, _, d, h, w = x.shape
    fz, fy, fx = (int(f) for f in factor)
    x = x.view(b, out_channels, fz, fy, fx, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, out_channels, d * fz, h * fy, w * fx)


class ReconstructionHead(nn.Module):
    """A 1x1x1 convolution to ``out_channels * prod(stride)`` values per token, rearranged to voxels (SimMIM's
    light decoder): the encoder, not the head, has to carry the information about the masked voxels."""

    def __init__(self, in_features: int, out_channels: int, stride: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        self.stride = [int(s) for s in stride]
        self.proj = nn.Conv3d(in_features, out_channels * self.stride[0] * self.stride[1] * self.stride[2], 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.proj(features), self.out_channels, self.stride)


class ProjectionHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> cosine layer to ``out_dim`` prototypes (weight norm with unit gain).

    ``batch_norm`` puts BatchNorm after each hidden layer (DINO's ``use_bn`` head). Pooled features of a fresh
    encoder differ by only a few per cent between crops, so without it every sample maps to almost the same
    prototype mix, centring cancels it and the teacher's target is uniform (loss stuck at ln out_dim) for
    thousands of steps; batch statistics put the differences between samples on the unit scale from step 0.
    """

    def __init__(self, in_features: int, out_dim: int = 1024, hidden_dim: int = 512, bottleneck_dim: int = 128,
                 batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(2):
            layers.append(nn.Linear(width, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        z = self.mlp(x.reshape(-1, x.shape[-1]))  # BatchNorm1d wants (items, features)
        z = F.normalize(z, dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1)).view(*leading, -1)


class ClassAttentionBlock(nn.Module):
    """CaiT class attention: the class tokens query the patch tokens; the patch tokens are not updated.

    Keys and values come from the patch tokens only (CaiT also lets the class tokens attend to themselves), so each
    class token's attention is a distribution over the final-stage tokens that can rank them for masking.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cls`` (B, K, C), ``tokens`` (B, N, C) -> updated class tokens (B, K, C), attention (B, heads, K, N)."""
        b, k, c = cls.shape
        n, h = tokens.shape[1], self.num_heads
        q = self.q(self.norm1(cls)).view(b, k, h, c // h).transpose(1, 2)
        kv = self.kv(self.norm1(tokens)).view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        attention = ((q * self.scale) @ kv[0].transpose(-2, -1)).softmax(dim=-1)
        mixed = (attention @ kv[1]).transpose(1, 2).reshape(b, k, c)
        cls = cls + self.proj(mixed)
        return cls + self.mlp(self.norm2(cls)), attention


class ClassAttentionHead(nn.Module):
    """SMART's semantic class attention for Swin (which has no [CLS] token): ``num_tokens`` learnt class tokens
    attend over the deepest stage's tokens through ``depth`` CaiT class-attention blocks. Pretraining only."""

    def __init__(self, dim: int, num_tokens: int = 1, depth: int = 2, num_heads: int | None = None):
        super().__init__()
        # the most heads (up to 8) that divide the width: any Swin width has one
        heads = num_heads or max(h for h in range(1, 9) if dim % h == 0)
        self.class_tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.class_tokens, std=0.02)
        self.blocks = nn.ModuleList(ClassAttentionBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` (B, N, C) -> class tokens (B, K, C) and the last block's attention (B, heads, K, N)."""
        cls = self.class_tokens.expand(tokens.shape[0], -1, -1)
        attention = None
        for block in self.blocks:
            cls, attention = block(cls, tokens)
        return self.norm(cls), attention

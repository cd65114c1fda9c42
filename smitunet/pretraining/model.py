"""The pretraining network: the SMIT Swin encoder plus reconstruction and projection heads.

The forward pass walks the encoder's own modules (``embed``, ``layers[i].run_blocks``, ``norm{i}``,
``layers[i].downsample``) so that, without extra masks, it equals ``encoder(x, mask)`` on the deepest normalised
stage; it adds what pretraining needs: SMART's dropped teacher tokens and GMIM's re-masking at deeper stages.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from smitunet.networks.blocks import cumulative_strides
from smitunet.pretraining.heads import ProjectionHead, ReconstructionHead


class PretrainNetwork(nn.Module):
    def __init__(self, encoder: nn.Module, in_channels: int, strides: Sequence[Sequence[int]], out_dim: int = 1024,
                 hidden_dim: int = 512, bottleneck_dim: int = 128, stage_mask_tokens: bool = False,
                 head_batch_norm: bool = True):
        super().__init__()
        self.encoder = encoder
        self.num_stages = encoder.num_stages
        levels = cumulative_strides(strides)
        self.token_stride = levels[1]
        self.feature_stride = levels[self.num_stages]  # the deepest normalised stage
        # Per-axis coarsening of stage i's grid relative to the token grid.
        self.stage_factors = [[a // b for a, b in zip(levels[i + 1], levels[1])] for i in range(self.num_stages)]
        width = encoder.channels[self.num_stages - 1]
        self.reconstruction_head = ReconstructionHead(width, in_channels, self.feature_stride)
        self.patch_head = ProjectionHead(width, out_dim, hidden_dim, bottleneck_dim, head_batch_norm)
        self.global_head = ProjectionHead(width, out_dim, hidden_dim, bottleneck_dim, head_batch_norm)
        # GMIM: one learnable token per deeper stage (pretraining only, never exported).
        self.stage_mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(encoder.channels[i])) for i in range(1, self.num_stages)) \
            if stage_mask_tokens else nn.ParameterList()
        for token in self.stage_mask_tokens:
            nn.init.trunc_normal_(token, std=0.02)

    def deepest_features(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                         token_dropout: torch.Tensor | None = None,
                         stage_masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Channel-last ``(B, d, h, w, C)`` output of the deepest stage after its ``norm``."""
        enc = self.encoder
        tokens = enc.embed(x, mask)
        if token_dropout is not None:  # dropped tokens carry nothing (Swin needs the full grid, so zero them)
            tokens = tokens * (~token_dropout).view(*tokens.shape[:4], 1).to(tokens.dtype)
        last = self.num_stages - 1
        for i, layer in enumerate(enc.layers):
            if i > 0 and stage_masks is not None and len(self.stage_mask_tokens):
                m = stage_masks[i - 1].view(*tokens.shape[:4], 1)
                tokens = torch.where(m, self.stage_mask_tokens[i - 1].to(tokens.dtype), tokens)
            tokens = layer.run_blocks(tokens)
            if i == last:
                return getattr(enc, f"norm{i}")(tokens)
            tokens = layer.downsample(tokens)
        raise RuntimeError("encoder has no stages")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, token_dropout: torch.Tensor | None = None,
                stage_masks: Sequence[torch.Tensor] | None = None, reconstruct: bool = True) -> dict[str, torch.Tensor]:
        features = self.deepest_features(x, mask, token_dropout, stage_masks)
        tokens = features.flatten(1, 3)                              # (B, n, C)
        out = {"patch_logits": self.patch_head(tokens), "global_logits": self.global_head(tokens.mean(dim=1))}
        if reconstruct:
            out["reconstruction"] = self.reconstruction_head(features.permute(0, 4, 1, 2, 3))
        return out

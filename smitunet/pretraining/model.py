"""The pretraining network: the SMIT Swin encoder plus reconstruction and projection heads.

The forward pass walks the encoder's own modules (``embed``, ``layers[i].run_blocks``, ``norm{i}``,
``layers[i].downsample``) so that, without extra masks, it equals ``encoder(x, mask)`` on the deepest normalised
stage; it adds what pretraining needs: SMART's dropped teacher tokens and GMIM's re-masking at deeper stages.
Pretraining-only heads (never exported): SMART's class attention with its class-token projection head, GMIM's
512-d token projector for the cross-correlation loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from smitunet.networks.blocks import cumulative_strides
from smitunet.pretraining.heads import ClassAttentionHead, ProjectionHead, ReconstructionHead


class PretrainNetwork(nn.Module):
    def __init__(self, encoder: nn.Module, in_channels: int, strides: Sequence[Sequence[int]], out_dim: int = 1024,
                 hidden_dim: int = 512, bottleneck_dim: int = 128, stage_mask_tokens: bool = False,
                 head_batch_norm: bool = True, class_tokens: int = 0, class_attention_depth: int = 2,
                 projection_dim: int = 0):
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
        # SMART: class tokens over the deepest tokens and their projection for co-distillation (0 = none).
        self.class_attention = ClassAttentionHead(width, class_tokens, class_attention_depth) if class_tokens else None
        self.class_head = ProjectionHead(width, out_dim, hidden_dim, bottleneck_dim, head_batch_norm) \
            if class_tokens else None
        # GMIM: a linear projection of every deepest token (as its reference) for the cross-correlation (0 = none).
        self.projector = nn.Linear(width, projection_dim) if projection_dim else None

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
                stage_masks: Sequence[torch.Tensor] | None = None, reconstruct: bool = True, distill: bool = True,
                project: bool = False) -> dict[str, torch.Tensor]:
        features = self.deepest_features(x, mask, token_dropout, stage_masks)
        tokens = features.flatten(1, 3)                              # (B, n, C)
        out = {}
        if distill:
            out["patch_logits"] = self.patch_head(tokens)
            out["global_logits"] = self.global_head(tokens.mean(dim=1))
            if self.class_attention is not None:
                cls, attention = self.class_attention(tokens)
                out["class_logits"], out["class_attention"] = self.class_head(cls), attention
        if project:
            if self.projector is None:
                raise RuntimeError("this network has no projector (projection_dim 0)")
            out["projection"] = self.projector(tokens)               # (B, n, projection_dim)
        if reconstruct:
            out["reconstruction"] = self.reconstruction_head(features.permute(0, 4, 1, 2, 3))
        return out

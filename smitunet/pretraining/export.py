"""Writing the pretrained encoder: our ``smit.pt`` format and the flat official SMIT layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from smitunet.checkpoint_io import save_checkpoint

FORMAT_VERSION = 1


def encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors under the official SMIT key names, detached on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


def pretraining_checkpoint(encoder: nn.Module, network: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """``{"format": "smitunet", "kind": "pretraining", "version": 1, "encoder", "network", "meta"}``."""
    return {"format": "smitunet", "kind": "pretraining", "version": FORMAT_VERSION, "encoder": encoder_state(encoder),
            "network": network, "meta": meta}


def save_pretrained(path: str | Path, encoder: nn.Module, network: dict[str, Any], meta: dict[str, Any]) -> None:
    save_checkpoint(pretraining_checkpoint(encoder, network, meta), path)


def save_official(path: str | Path, encoder: nn.Module) -> None:
    """The flat state_dict that the official SMIT pretraining saves (``mask_token``, ``patch_embed.*``, ...)."""
    save_checkpoint(encoder_state(encoder), path)

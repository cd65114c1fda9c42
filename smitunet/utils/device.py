"""One rule for ``--device auto|cpu|cuda[:N]`` in every command."""

from __future__ import annotations

import torch

from smitunet.errors import SmitunetError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without a GPU is a one-line user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SmitunetError(f"--device {name} was requested but no CUDA GPU is available")
    return device

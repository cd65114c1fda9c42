"""Safe checkpoint reading: never unpickle code.

Every checkpoint read in smitunet goes through ``load_checkpoint``, which uses
``torch.load(weights_only=True)``. A file carrying a pickled code payload is refused, and the payload
never runs.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from smitunet.errors import SmitunetError
from smitunet.utils.files import atomic_path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        raise SmitunetError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False; show only the offending global, never that advice.
        found = re.search(r"Unsupported (?:global|operand)[^\n.]*", str(exc))
        detail = f" ({found.group(0).strip()})" if found else ""
        raise SmitunetError(f"{path}: refused to load: the file contains pickled objects other than tensors "
                            f"and plain containers (possible code payload); nothing in it was executed{detail}") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise SmitunetError(f"{path}: not a readable checkpoint (truncated or not a torch file: "
                            f"{str(exc).splitlines()[0][:160]})") from None


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Save atomically; ``obj`` must hold only tensors and plain Python containers/primitives."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


TRAINING_CHECKPOINT_VERSION = 1
TRAINING_CHECKPOINT_KEYS = ("network", "state_dict", "plans", "configuration", "epoch")


def load_training_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A smitunet training checkpoint (``kind: training``), validated: one line naming the file when it is another
    kind of file, lacks a field, or comes from a newer smitunet (older versions load as they are: none exist yet)."""
    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "smitunet" or ckpt.get("kind") != "training":
        raise SmitunetError(f"{path}: not a smitunet training checkpoint")
    missing = [k for k in TRAINING_CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise SmitunetError(f"{path}: not a complete smitunet training checkpoint (missing {', '.join(missing)})")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > TRAINING_CHECKPOINT_VERSION:
        raise SmitunetError(f"{path}: training checkpoint version {version!r} is newer than this smitunet reads "
                            f"({TRAINING_CHECKPOINT_VERSION}); update smitunet")
    if not isinstance(ckpt["network"], dict) or not {"name", "kwargs"} <= set(ckpt["network"]):
        raise SmitunetError(f"{path}: its network entry lacks name/kwargs")
    return ckpt

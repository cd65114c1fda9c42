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

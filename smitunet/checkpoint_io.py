"""Safe checkpoint reading: never unpickle code.

Every checkpoint read in smitunet goes through ``load_checkpoint``, which uses
``torch.load(weights_only=True)``. A file carrying a pickled code payload is refused, and the payload
never runs.
"""

from __future__ import annotations

import errno
import pickle
import re
from dataclasses import dataclass, field, fields
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
    except Exception as exc:  # noqa: BLE001 - torch's unpickler fails on arbitrary bytes in many ways (KeyError, ...)
        first = (str(exc).splitlines() or [""])[0][:160]
        raise SmitunetError(f"{path}: not a readable checkpoint (truncated or not a torch file: "
                            f"{type(exc).__name__} {first})") from None


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Save atomically; ``obj`` must hold only tensors and plain Python containers/primitives."""
    with atomic_path(path, suffix=".pt") as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            # torch's zip writer reports a failed write (full disk, file-size limit) as a RuntimeError
            first = (str(exc).splitlines() or [""])[0][:120]
            raise OSError(errno.EIO, f"torch.save could not write the file ({first}): the disk is full or a "
                                     "file-size limit was reached") from None


TRAINING_CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainingCheckpoint:
    """What ``smitunet_train`` writes (``checkpoint_{latest,best,final}.pt``; CONTRACTS.md), typed.

    Stored as a plain dict of tensors and containers (``to_dict``) so that ``weights_only=True`` loads it; read back
    through ``load`` / ``from_dict``, which check every required field and the version. The resume fields
    (optimizer, scheduler, scaler, rng, logs) are empty in a checkpoint written only for prediction."""

    network: dict          # {"name", "kwargs"[, "builder": "module:function" of a plug-in architecture]}
    state_dict: dict
    plans: dict
    configuration: str
    epoch: int             # completed epochs
    trainer_name: str = ""
    dataset_json: dict = field(default_factory=dict)
    fold: int | str = 0
    inference_mirror_axes: list = field(default_factory=lambda: [0, 1, 2])  # axes the trainer allows for TTA
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)
    trainer_state: dict = field(default_factory=dict)  # best EMA, seed, and the trainer's own extra_state()
    version: int = TRAINING_CHECKPOINT_VERSION

    REQUIRED = ("network", "state_dict", "plans", "configuration", "epoch")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"format": "smitunet", "kind": "training", **d}

    @classmethod
    def from_dict(cls, ckpt: Any, source: str | Path) -> "TrainingCheckpoint":
        """One line naming ``source`` when it is another kind of file, lacks a field, or comes from a newer
        smitunet (older versions load as they are: none exist yet)."""
        if not isinstance(ckpt, dict) or ckpt.get("format") != "smitunet" or ckpt.get("kind") != "training":
            raise SmitunetError(f"{source}: not a smitunet training checkpoint")
        missing = [k for k in cls.REQUIRED if k not in ckpt]
        if missing:
            raise SmitunetError(f"{source}: not a complete smitunet training checkpoint (missing {', '.join(missing)})")
        version = ckpt.get("version")
        if not isinstance(version, int) or version > TRAINING_CHECKPOINT_VERSION:
            raise SmitunetError(f"{source}: training checkpoint version {version!r} is newer than this smitunet reads "
                                f"({TRAINING_CHECKPOINT_VERSION}); update smitunet")
        if not isinstance(ckpt["network"], dict) or not {"name", "kwargs"} <= set(ckpt["network"]):
            raise SmitunetError(f"{source}: its network entry lacks name/kwargs")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in ckpt.items() if k in names and v is not None}
        if "inference_mirror_axes" in ckpt and ckpt["inference_mirror_axes"] is None:
            values["inference_mirror_axes"] = []  # None has always meant: no test-time mirroring
        values["epoch"] = int(values["epoch"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "TrainingCheckpoint":
        return cls.from_dict(load_checkpoint(path, map_location), Path(path))

    def save(self, path: str | Path) -> None:
        save_checkpoint(self.to_dict(), path)


def load_training_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> TrainingCheckpoint:
    """A smitunet training checkpoint, validated (``TrainingCheckpoint.load``)."""
    return TrainingCheckpoint.load(path, map_location)

"""Training checkpoints (CONTRACTS.md): plain containers and tensors only, so ``weights_only=True`` loads them.

RNG states are converted to tensors/lists (numpy's state tuple and Python's ``random`` state are not
allowed by the safe unpickler as they are).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from smitunet.checkpoint_io import TrainingCheckpoint, load_training_checkpoint

CHECKPOINT_NAMES = ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt")


def capture_rng_state() -> dict:
    mt_name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": mt_name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def build_training_checkpoint(*, network_config, state_dict, optimizer, scheduler, scaler, epoch: int, logs: dict,
                              extra: dict, plans_dict: dict, configuration: str, trainer_name: str,
                              dataset_json: dict, fold, inference_mirror_axes=(0, 1, 2),
                              network_builder: str | None = None) -> TrainingCheckpoint:
    network = {"name": network_config.name, "kwargs": dict(network_config.kwargs)}
    if network_builder is not None:  # a plug-in architecture: prediction imports it to rebuild the network
        network["builder"] = network_builder
    return TrainingCheckpoint(
        network=network, state_dict=state_dict, plans=plans_dict, configuration=configuration, epoch=int(epoch),
        trainer_name=trainer_name, dataset_json=dataset_json, fold=fold if fold == "all" else int(fold),
        inference_mirror_axes=[int(a) for a in (inference_mirror_axes or ())],
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
        rng=capture_rng_state(), logs=logs, trainer_state=extra)


def save_training_checkpoint(checkpoint: TrainingCheckpoint, path: Path) -> None:
    checkpoint.save(path)


def checkpoint_to_resume(fold_dir: Path) -> Path | None:
    """The checkpoint that holds the most completed epochs (final wins ties: it is the end of a run)."""
    best_path, best_epoch = None, -1
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt"):
        path = Path(fold_dir) / name
        if path.is_file():
            epoch = load_training_checkpoint(path).epoch
            if epoch > best_epoch:
                best_path, best_epoch = path, epoch
    return best_path

"""Tiny plans and checkpoints in the CONTRACTS.md training format, for prediction tests (no trainer needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from smitunet.checkpoint_io import save_checkpoint
from smitunet.networks.registry import resolve_kwargs
from smitunet.networks import create_network
from smitunet.imageio import write_image
from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans

TINY_PATCH = [16, 16, 16]
TINY_STRIDES = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]


def tiny_plans(num_channels=1, num_classes=3, spacing=(1.0, 1.0, 1.0), normalization="ZScore",
               dataset_name="Dataset990_Tiny", patch=TINY_PATCH) -> Plans:
    kwargs = resolve_kwargs("smit_tiny", num_channels, num_classes, patch, strides=TINY_STRIDES)
    labels = {"background": 0, **{f"class{i}": i for i in range(1, num_classes)}}
    cfg = ConfigurationPlan(
        data_identifier="smitunetPlans_3d_fullres", spacing=[float(s) for s in spacing], patch_size=list(patch),
        batch_size=2, median_image_shape=[32, 32, 32], normalization=[normalization] * num_channels,
        use_mask_for_norm=[False] * num_channels, network=NetworkConfig("smit_tiny", kwargs))
    intensity = {"mean": 0.0, "std": 100.0, "percentile_00_5": -1000.0, "percentile_99_5": 1000.0,
                 "min": -1024.0, "max": 3000.0, "median": 0.0}
    return Plans(dataset_name=dataset_name, plans_name="smitunetPlans",
                 channel_names={str(c): ("CT" if normalization == "CT" else "MRI") for c in range(num_channels)},
                 labels=labels, file_ending=".nii.gz", original_median_spacing=list(spacing),
                 original_median_shape=[32, 32, 32],
                 foreground_intensity_properties={str(c): dict(intensity) for c in range(num_channels)},
                 configurations={"3d_fullres": cfg})


def save_tiny_model(results_dir: Path, plans: Plans, folds=(0,), trainer="SMITTrainer", seed=0,
                    state_dicts=None) -> Path:
    """Write fold checkpoints of an (untrained, seeded) network; returns the model folder."""
    cfg = plans.configuration("3d_fullres")
    model_dir = Path(results_dir) / plans.dataset_name / f"{trainer}__{plans.plans_name}__3d_fullres"
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        net = create_network(cfg.network.name, **cfg.network.kwargs)
        state = state_dicts[i] if state_dicts else net.state_dict()
        ckpt = {"format": "smitunet", "kind": "training", "version": 1,
                "network": {"name": cfg.network.name, "kwargs": dict(cfg.network.kwargs)},
                "state_dict": state, "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1, "rng": {},
                "logs": {}, "plans": plans.to_dict(), "configuration": "3d_fullres", "trainer_name": trainer,
                "dataset_json": {"labels": plans.labels, "channel_names": plans.channel_names}, "fold": fold}
        save_checkpoint(ckpt, model_dir / f"fold_{fold}" / "checkpoint_final.pt")
    return model_dir


def write_case(folder, name, geo, channels=1, raw_naming=True, ending=".nii.gz", seed=0):
    rng = np.random.default_rng(seed)
    for c in range(channels):
        arr = rng.normal(100, 30, geo.shape_zyx).astype(np.float32)
        fname = f"{name}_{c:04d}{ending}" if raw_naming else f"{name}{ending}"
        write_image(arr, geo, folder / fname)

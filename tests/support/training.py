"""Helpers shared by the training tests (no tests here): a tiny learnable dataset written directly in the
preprocessed format of docs/CONTRACTS.md, with a smit_tiny plan, so trainer tests need no preprocessing run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from smitunet.imageio import Geometry
from smitunet.networks import get_preset
from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans
from smitunet.utils.files import save_json, save_npy, save_npz
from support.paths import REPO_ROOT

DATASET = "Dataset901_TrainTiny"
CONFIG = "3d_fullres"
PATCH = [16, 16, 16]
# Total stride 8 so a 16^3 patch keeps more than one voxel at the bottom of the U.
STRIDES = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]


def tiny_plans(batch_size: int = 2, network: str = "smit_tiny") -> Plans:
    kwargs = dict(get_preset(network))
    kwargs.update(in_channels=1, num_classes=3, patch_size=list(PATCH), strides=STRIDES, num_stages=4,
                  deep_supervision=True)
    config = ConfigurationPlan(
        data_identifier=f"smitunetPlans_{CONFIG}", spacing=[1.0, 1.0, 1.0], patch_size=list(PATCH),
        batch_size=batch_size, median_image_shape=[20, 24, 20], normalization=["ZScore"], use_mask_for_norm=[False],
        network=NetworkConfig(network, kwargs))
    return Plans(dataset_name=DATASET, plans_name="smitunetPlans", channel_names={"0": "MRI"},
                 labels={"background": 0, "a": 1, "b": 2}, file_ending=".nii.gz",
                 original_median_spacing=[1.0, 1.0, 1.0], original_median_shape=[20, 24, 20],
                 foreground_intensity_properties={"0": {"mean": 1.0, "std": 1.0}}, configurations={CONFIG: config})


def _case_arrays(rng: np.random.Generator, shape=(20, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball (label 1) and a darker box (label 2) at random places, plus noise."""
    seg = np.zeros(shape, np.int16)
    zz, yy, xx = np.indices(shape)
    c = rng.integers([5, 5, 5], [shape[0] - 5, shape[1] - 5, shape[2] - 5])
    seg[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 16] = 1
    lo = rng.integers([1, 1, 1], [shape[0] - 6, shape[1] - 6, shape[2] - 6])
    box = (slice(lo[0], lo[0] + 4), slice(lo[1], lo[1] + 5), slice(lo[2], lo[2] + 4))
    seg[box][seg[box] == 0] = 2
    image = np.choose(seg, [0.0, 2.0, -1.5]).astype(np.float32) + rng.normal(0, 0.3, shape).astype(np.float32)
    return image[None], seg[None]


def make_preprocessed_dataset(preprocessed_root: Path, num_cases: int = 6, batch_size: int = 2, seed: int = 0,
                              network: str = "smit_tiny") -> Path:
    """Write dataset.json, plans and ``num_cases`` preprocessed cases; returns the dataset folder."""
    folder = Path(preprocessed_root) / DATASET
    plans = tiny_plans(batch_size, network)
    plans.save(folder / "smitunetPlans.json")
    save_json({"channel_names": {"0": "MRI"}, "labels": plans.labels, "numTraining": num_cases,
               "file_ending": ".nii.gz"}, folder / "dataset.json")
    data_dir = folder / plans.configurations[CONFIG].data_identifier
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        case = f"tiny_{i:03d}"
        image, seg = _case_arrays(rng)
        save_npy(image, data_dir / f"{case}.npy")
        save_npy(seg, data_dir / f"{case}_seg.npy")
        save_npz(data_dir / f"{case}_locations.npz",
                 **{f"class_{k}": np.argwhere(seg[0] == k).astype(np.int32) for k in (1, 2)})
        shape = list(seg.shape[1:])
        geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                            direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), size=tuple(reversed(shape)))
        save_json({"geometry": geometry.to_dict(), "shape_before_cropping": shape,
                   "bbox_used_for_cropping": [[0, s] for s in shape], "shape_after_cropping_before_resampling": shape,
                   "spacing_original": [1.0, 1.0, 1.0], "spacing_target": [1.0, 1.0, 1.0]}, data_dir / f"{case}.json")
    return folder


def fold_dir(results_root: Path, trainer: str = "SMITTrainer", fold: str | int = 0) -> Path:
    return Path(results_root) / DATASET / f"{trainer}__smitunetPlans__{CONFIG}" / f"fold_{fold}"


def cli_env(extra_pythonpath: list[Path] | None = None) -> dict:
    """Environment for CLI subprocesses: one thread each (2 shared cores), the test's folders kept."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    paths = [str(p) for p in (extra_pythonpath or [])] + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run_train_cli(args: list[str], env: dict | None = None, timeout: float = 300, **kwargs):
    return subprocess.run([sys.executable, "-m", "smitunet.training.cli", *args], env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, **kwargs)

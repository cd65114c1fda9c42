"""Experiment planning for the SMIT Swin U-Net: spacing, patch, per-stage merges and batch size.

Network geometry (see docs/CONTRACTS.md): a fixed 2x2x2 patch embedding, then after each Swin layer a patch
merge whose stride is 1 or 2 per axis. An axis is merged only while its deepest feature map keeps at least
``MIN_FEATURE_SIZE`` voxels of real image, so a 35-voxel axis gets a total stride of 8 (patch 40) instead
of being padded to 64; the number of Swin layers used is the largest number of merges any axis takes.
The patch starts as the median image and shrinks, physically longest axis first, until a batch of two fits
the memory target; the batch then grows while it fits and covers at most 5 % of the dataset's voxels.

``2d`` (every dataset, as nnU-Net): the same network on (y, x) slices of the 3d_fullres data, so it shares that
preprocessed folder; its patch starts from the in-plane median shape and is fitted to the same memory target.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from smitunet.contracts import Fingerprint
from smitunet.errors import SmitunetError
from smitunet.plans import (DEFAULT_PLANS_NAME, ConfigurationPlan, NetworkConfig, Plans, foreground_labels_of,
                            has_regions_of, num_outputs_of)
from smitunet.preprocessing.normalization import scheme_for_channel
from smitunet.preprocessing.resampling import ANISOTROPY_THRESHOLD

DEFAULT_PRESET = "smit_small"
DEFAULT_GPU_MEMORY_GB = 8.0
PATCH_EMBED_STRIDE = 2
MIN_FEATURE_SIZE = 4          # deepest feature map, voxels of real image per axis
MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION = 0.05   # one batch covers at most this fraction of the dataset's voxels
LOWRES_COVERAGE = 0.25        # 3d_lowres when the full-resolution patch covers less of the median image
LOWRES_SPACING_STEP = 1.03


def _get_preset(name: str) -> dict[str, Any]:
    from smitunet.networks.registry import get_preset  # lazy: keeps torch out of the workers

    return dict(get_preset(name))


def _estimate_memory(network: NetworkConfig, batch_size: int) -> int:
    """What a training step on the GPU the memory target describes runs: float16 autocast, and the optimiser of the
    trainer that trains this network (AdamW for the Swin presets, SGD for the convolutional baseline)."""
    from smitunet.networks.memory import estimate_training_memory_bytes
    from smitunet.networks.registry import is_swin

    optimizer = "adamw" if is_swin(network.name) else "sgd"
    return int(estimate_training_memory_bytes(network, batch_size, optimizer=optimizer, amp=True))


# ---------------------------------------------------------------------------------------------------------
# spacing

def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                   threshold: float = ANISOTROPY_THRESHOLD) -> list[float]:
    """Median spacing; a much coarser axis (> threshold x the others) gets its 10th percentile (nnU-Net)."""
    spacings = np.asarray(spacings, dtype=float)
    target = np.median(spacings, axis=0)
    median_shape = np.median(np.asarray(shapes, dtype=float), axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > threshold * max(target[others])
    aniso_voxels = median_shape[worst] * threshold < min(median_shape[others])
    if aniso_spacing and aniso_voxels:
        value = np.percentile(spacings[:, worst], 10)
        if value < max(target[others]):
            value = max(max(target[others]), value) + 1e-5
        target[worst] = value
    return [float(v) for v in target]


# ---------------------------------------------------------------------------------------------------------
# network geometry

def axis_merges(size: float, max_merges: int, min_feature: int = MIN_FEATURE_SIZE) -> int:
    """Patch merges along an axis of ``size`` voxels that keep >= min_feature real voxels at the bottom."""
    ratio = size / (PATCH_EMBED_STRIDE * min_feature)
    return 0 if ratio < 2 else int(min(max_merges, math.floor(math.log2(ratio))))


def merge_schedule(merges: Sequence[int], spacing: Sequence[float], num_stages: int) -> list[list[int]]:
    """Per-stage merge strides: at each stage merge the axes that are not coarser than 2x the finest one
    (nnU-Net's rule, so anisotropic axes wait), unless an axis must merge now to get its merges in."""
    remaining = list(merges)
    current = [s * PATCH_EMBED_STRIDE for s in spacing]
    schedule = []
    for stage in range(num_stages):
        left = num_stages - stage
        candidates = [a for a in range(len(remaining)) if remaining[a] > 0]
        finest = min((current[a] for a in candidates), default=0.0)
        step = [1] * len(remaining)
        for a in candidates:
            if remaining[a] >= left or current[a] <= 2 * finest:
                step[a] = 2
                remaining[a] -= 1
                current[a] *= 2
        schedule.append(step)
    return schedule


def network_geometry(sizes: Sequence[float], spacing: Sequence[float], max_stages: int,
                     min_feature: int = MIN_FEATURE_SIZE) -> tuple[list[int], int, list[list[int]]]:
    """(patch_size, num_stages, strides) for an image region of ``sizes`` voxels (z, y, x), or (y, x) for 2d."""
    merges = [axis_merges(s, max_stages, min_feature) for s in sizes]
    num_stages = max(1, max(merges))
    strides = [[PATCH_EMBED_STRIDE] * len(sizes)] + merge_schedule(merges, spacing, num_stages)
    total = [int(np.prod([s[a] for s in strides])) for a in range(len(sizes))]
    patch = [int(math.ceil(max(s, 1) / t) * t) for s, t in zip(sizes, total)]
    return patch, num_stages, strides


def network_config(preset_name: str, preset: dict, in_channels: int, num_classes: int, patch: list[int],
                   num_stages: int, strides: list[list[int]]) -> NetworkConfig:
    kwargs = {**preset, "in_channels": in_channels, "num_classes": num_classes, "patch_size": list(patch),
              "num_stages": num_stages, "strides": strides, "deep_supervision": True}
    if len(patch) == 2:  # only 2d says so: 3D network kwargs stay as every earlier plan and checkpoint has them
        kwargs["spatial_dims"] = 2
    return NetworkConfig(name=preset_name, kwargs=kwargs)


def stage_layout(patch: Sequence[int], strides: list[list[int]], window: Any) -> list[dict[str, Any]]:
    """Per Swin layer: its feature map size, attention window (clipped to the map) and merge stride after."""
    windows = list(window) if isinstance(window, (list, tuple)) else [window] * len(patch)
    shape = [p // s for p, s in zip(patch, strides[0])]
    layout = []
    for merge in strides[1:]:
        layout.append({"feature_size": list(shape), "window": [min(w, s) for w, s in zip(windows, shape)],
                       "merge_stride": list(merge)})
        shape = [s // m for s, m in zip(shape, merge)]
    layout.append({"feature_size": list(shape), "bottleneck": True})
    return layout


# ---------------------------------------------------------------------------------------------------------
# patch and batch under a memory target

class _Sizer:
    """Finds the largest patch and batch that fit the memory target for one spacing."""

    def __init__(self, preset_name: str, preset: dict, in_channels: int, num_classes: int, budget_bytes: float,
                 keep_stages: bool = False):
        self.preset_name, self.preset = preset_name, preset
        self.in_channels, self.num_classes, self.budget = in_channels, num_classes, budget_bytes
        self.max_stages = len(preset.get("depths", [])) or 4
        # A pretrained encoder: shrinking the patch for memory must not drop a stage the data allows.
        self.keep_stages = keep_stages

    def config(self, sizes, spacing):
        patch, stages, strides = network_geometry(sizes, spacing, self.max_stages)
        return network_config(self.preset_name, self.preset, self.in_channels, self.num_classes, patch, stages,
                              strides)

    def fit_patch(self, median_shape: Sequence[float], spacing: Sequence[float]) -> NetworkConfig:
        sizes = [float(s) for s in median_shape]
        cfg = self.config(sizes, spacing)
        stages = cfg.kwargs["num_stages"]
        locked: set[int] = set()  # axes whose shrinking would cost a Swin stage
        # Each estimate traces the network (~0.3-2 s), so shrink by the predicted factor between estimates
        # (activation memory is close to proportional to the patch volume) instead of one step per estimate.
        while (estimate := _estimate_memory(cfg, MIN_BATCH_SIZE)) > self.budget:
            goal = np.prod(cfg.kwargs["patch_size"]) * 0.95 * self.budget / estimate
            while np.prod(cfg.kwargs["patch_size"]) > goal:
                before = list(sizes)
                if not self._shrink(sizes, cfg, spacing, locked):
                    return cfg  # smallest sensible patch: the memory target is simply too small
                candidate = self.config(sizes, spacing)
                if self.keep_stages and candidate.kwargs["num_stages"] < stages:
                    locked.add(next(a for a in range(len(sizes)) if sizes[a] != before[a]))
                    sizes[:] = before
                    continue
                cfg = candidate
        return cfg

    @staticmethod
    def _shrink(sizes: list[float], cfg: NetworkConfig, spacing: Sequence[float], locked=frozenset()) -> bool:
        """Shrink the physically longest axis by one stride step (or 10 %); False when nothing can shrink."""
        patch, floor = cfg.kwargs["patch_size"], PATCH_EMBED_STRIDE * MIN_FEATURE_SIZE
        shrinkable = [a for a in range(len(sizes)) if sizes[a] > floor and a not in locked]
        if not shrinkable:
            return False
        axis = max(shrinkable, key=lambda a: (patch[a] * spacing[a], patch[a]))
        total = int(np.prod([s[axis] for s in cfg.kwargs["strides"]]))
        sizes[axis] = max(floor, min(patch[axis] - total, int(patch[axis] * 0.9)))
        return True

    def batch_size(self, cfg: NetworkConfig, dataset_voxels: float) -> tuple[int, float]:
        """Largest batch within the memory target and the dataset-fraction cap, at least MIN_BATCH_SIZE."""
        patch_voxels = float(np.prod(cfg.kwargs["patch_size"]))
        cap = max(MIN_BATCH_SIZE, int(MAX_DATASET_FRACTION * dataset_voxels / patch_voxels))
        # Memory grows linearly with the batch (parameters fixed, activations per sample): two estimates suffice.
        two, one = _estimate_memory(cfg, MIN_BATCH_SIZE), _estimate_memory(cfg, 1)
        per_sample = max(two - one, 1)
        fixed = one - per_sample
        bs = int(max(MIN_BATCH_SIZE, min(cap, (self.budget - fixed) // per_sample)))
        return bs, (fixed + bs * per_sample) / 1024 ** 3


# ---------------------------------------------------------------------------------------------------------
# the plans

def _shapes_at(fingerprint: dict, spacing: Sequence[float]) -> np.ndarray:
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=float)
    spacings = np.asarray(fingerprint["spacings"], dtype=float)
    return shapes * spacings / np.asarray(spacing, dtype=float)


def _configuration(name: str, plans_name: str, spacing: list[float], fingerprint: dict, sizer: _Sizer,
                   normalization: list[str], use_mask: list[bool], geometry: dict | None = None) -> ConfigurationPlan:
    """One configuration; ``geometry`` (patch_size, num_stages, strides) fixes the network's shape instead of
    fitting it to the median image and the memory target (a pretrained network's own patch)."""
    shapes = _shapes_at(fingerprint, spacing)
    median_shape = [int(round(v)) for v in np.median(shapes, axis=0)]
    if geometry is None:
        cfg = sizer.fit_patch(median_shape, spacing)
    else:
        cfg = network_config(sizer.preset_name, sizer.preset, sizer.in_channels, sizer.num_classes,
                             list(geometry["patch_size"]), int(geometry["num_stages"]), geometry["strides"])
    batch, memory_gb = sizer.batch_size(cfg, float(np.prod(shapes, axis=1).sum()))
    return ConfigurationPlan(data_identifier=f"{plans_name}_{name}", spacing=[float(s) for s in spacing],
                             patch_size=list(cfg.kwargs["patch_size"]), batch_size=int(batch),
                             median_image_shape=median_shape, normalization=normalization,
                             use_mask_for_norm=use_mask, network=cfg, estimated_memory_gb=round(memory_gb, 3))


def _configuration_2d(fullres: ConfigurationPlan, fingerprint: dict, sizer: _Sizer) -> ConfigurationPlan:
    """nnU-Net's ``2d``: (y, x) slices of the 3d_fullres cases. Same spacing and normalisation, hence the same
    data_identifier (no second preprocessed copy); the patch starts from the in-plane median shape and shrinks
    until a batch fits the memory target, and the batch follows the same rules as in 3D."""
    shapes = _shapes_at(fingerprint, fullres.spacing)
    cfg = sizer.fit_patch(fullres.median_image_shape[1:], fullres.spacing[1:])
    batch, memory_gb = sizer.batch_size(cfg, float(np.prod(shapes, axis=1).sum()))
    return dataclasses.replace(fullres, patch_size=list(cfg.kwargs["patch_size"]), batch_size=int(batch),
                               network=cfg, estimated_memory_gb=round(memory_gb, 3))


def _coverage(c: ConfigurationPlan) -> float:
    return float(np.prod(c.patch_size) / np.prod(c.median_image_shape))


def _lowres(fullres: ConfigurationPlan, plans_name: str, fingerprint: dict, sizer: _Sizer,
            normalization: list[str], use_mask: list[bool]) -> ConfigurationPlan | None:
    """A coarser configuration whose patch covers >= LOWRES_COVERAGE of its median image (nnU-Net style)."""
    spacing = np.asarray(fullres.spacing, dtype=float)
    for _ in range(200):
        # Coarsen the axes more than 2x finer than the coarsest first, so lowres data becomes more isotropic.
        fine = spacing.max() / spacing > 2
        spacing = np.where(fine, spacing * LOWRES_SPACING_STEP, spacing) if fine.any() else spacing * LOWRES_SPACING_STEP
        median = np.median(_shapes_at(fingerprint, spacing), axis=0)
        if np.prod(median) * LOWRES_COVERAGE <= np.prod(fullres.patch_size):
            low = _configuration("3d_lowres", plans_name, [float(s) for s in spacing], fingerprint, sizer,
                                 normalization, use_mask)
            return low if _coverage(low) >= LOWRES_COVERAGE * 0.9 else None
    return None


def cascade_configuration(fullres: ConfigurationPlan, num_foreground_labels: int,
                          previous_stage: str = "3d_lowres") -> ConfigurationPlan:
    """nnU-Net's 3d_cascade_fullres: 3d_fullres's data (same preprocessed folder), spacing, patch and batch, with
    the previous stage's segmentation as one extra one-hot input channel per foreground label."""
    kwargs = dict(fullres.network.kwargs)
    kwargs["in_channels"] = int(kwargs["in_channels"]) + num_foreground_labels
    return dataclasses.replace(fullres, previous_stage=previous_stage,
                               network=NetworkConfig(fullres.network.name, kwargs))


def _validated_spacing(spacing: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in spacing]
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise SmitunetError(f"{what} must be three positive spacings (z y x, mm), got {list(spacing)}")
    return values


def pretrained_preset(requested: str, architecture) -> tuple[str, dict[str, Any]]:
    """(preset name, kwargs) for a network that a pretrained checkpoint fits: the preset whose architecture the
    checkpoint matches (its decoder settings come along), else ``requested``; the architecture is the checkpoint's."""
    from smitunet.networks.registry import PRESETS, is_swin

    own = architecture.network_kwargs()
    n = architecture.num_stages

    def matches(name: str) -> bool:
        p = PRESETS[name]
        return is_swin(name) and all((p[k][:n] if k in ("depths", "num_heads") else p.get(k)) == own[k]
                                     for k in own if k != "merge_order")

    name = requested if matches(requested) else next((p for p in PRESETS if matches(p)), requested)
    if not is_swin(name):
        raise SmitunetError(f"--preset {name}: a pretrained SMIT checkpoint needs a Swin preset")
    return name, {**_get_preset(name), **own}


def _pretrained_geometry(architecture, spacing_overridden: bool) -> dict | None:
    """The patch and strides a smitunet pretraining file was made with (it was planned for this data)."""
    kwargs = (architecture.meta.get("network") or {}).get("kwargs") or {}
    if spacing_overridden or not all(k in kwargs for k in ("patch_size", "strides", "num_stages")):
        return None
    return {k: kwargs[k] for k in ("patch_size", "strides", "num_stages")}


def plan_experiment(dataset_name: str, dataset_json: dict, fingerprint: dict, *, preset: str = DEFAULT_PRESET,
                    plans_name: str = DEFAULT_PLANS_NAME, gpu_memory_target_gb: float = DEFAULT_GPU_MEMORY_GB,
                    target_spacing_override: Sequence[float] | None = None, pretrained=None,
                    decoder: str | None = None) -> Plans:
    """Make the plans for a dataset from its fingerprint (pure: writes nothing).

    ``target_spacing_override``: the 3d_fullres spacing (z, y, x), as nnU-Net's ``-overwrite_target_spacing``.
    ``pretrained``: a ``smitunet.networks.checkpoint_architecture.PretrainedArchitecture``; the network takes its
    embed dim, depths, heads and window and keeps every stage it holds that the data allows; a smitunet
    pretraining file also fixes spacing, normalisation and patch. Lines worth telling the user are returned in
    ``plans.planner["notes"]``.
    """
    if gpu_memory_target_gb <= 0:
        raise SmitunetError(f"--gpu_memory_target must be positive, got {gpu_memory_target_gb}")
    fingerprint = Fingerprint.coerce(fingerprint).to_dict()  # checked fields, whatever the caller passed
    notes: list[str] = []
    if pretrained is None:
        preset_kwargs = _get_preset(preset)
    else:
        preset, preset_kwargs = pretrained_preset(preset, pretrained)
    if decoder is not None:  # the Swin U-Net's decoder: "res" (default) or "light" (1x1 skips, no stem)
        preset_kwargs["decoder"] = decoder
    channels = {str(k): v for k, v in dataset_json["channel_names"].items()}
    labels = {str(k): ([int(x) for x in v] if isinstance(v, list) else int(v))  # lists: regions
              for k, v in dataset_json["labels"].items()}
    # The ignore label is no class; with regions there is one (sigmoid) output per region and none for background.
    sizer = _Sizer(preset, preset_kwargs, len(channels), num_outputs_of(labels),
                   gpu_memory_target_gb * 1024 ** 3,
                   keep_stages=pretrained is not None)
    normalization = [scheme_for_channel(channels[str(c)]) for c in range(len(channels))]
    meta = pretrained.meta if pretrained is not None else {}
    if pretrained is not None and pretrained.in_channels != len(channels):
        notes.append(f"the checkpoint was trained on {pretrained.in_channels} input channel(s), the dataset has "
                     f"{len(channels)}: its patch embedding is adapted when loaded")
    if meta.get("normalization") and len(meta["normalization"]) == len(channels) and meta["normalization"] != normalization:
        notes.append(f"normalisation {meta['normalization']} from the checkpoint (the dataset's channel names suggest "
                     f"{normalization})")
        normalization = list(meta["normalization"])
    cropped_a_lot = fingerprint["median_relative_size_after_cropping"] < 0.75
    use_mask = [n == "ZScore" and cropped_a_lot for n in normalization]
    if target_spacing_override is not None:
        spacing = _validated_spacing(target_spacing_override, "--spacing")
    elif meta.get("spacing"):
        spacing = _validated_spacing(meta["spacing"], f"{pretrained.source}: meta.spacing")
        notes.append(f"spacing {spacing} (z, y, x) from the checkpoint")
    else:
        spacing = target_spacing(fingerprint["spacings"], fingerprint["shapes_after_crop"])
    geometry = _pretrained_geometry(pretrained, target_spacing_override is not None) if pretrained else None
    if geometry is not None:
        notes.append(f"patch {geometry['patch_size']} and strides from the checkpoint")
    configs = {"3d_fullres": _configuration("3d_fullres", plans_name, spacing, fingerprint, sizer,
                                            normalization, use_mask, geometry)}
    if _coverage(configs["3d_fullres"]) < LOWRES_COVERAGE:
        low = _lowres(configs["3d_fullres"], plans_name, fingerprint, sizer, normalization, use_mask)
        if low is not None:
            configs["3d_lowres"] = low
            configs["3d_cascade_fullres"] = cascade_configuration(configs["3d_fullres"],
                                                                  len(foreground_labels_of(labels)))
    configs["2d"] = _configuration_2d(configs["3d_fullres"], fingerprint, sizer)
    if pretrained is not None:
        used = configs["3d_fullres"].network.kwargs["num_stages"]
        if used < pretrained.num_stages:
            need = PATCH_EMBED_STRIDE * MIN_FEATURE_SIZE * 2 ** pretrained.num_stages
            shape = configs["3d_fullres"].median_image_shape
            notes.append(f"3d_fullres uses {used} of the checkpoint's {pretrained.num_stages} Swin stages: the median "
                         f"image is {shape} voxels at spacing {spacing}, and {pretrained.num_stages} stages need an "
                         f"axis of at least {need} voxels ({MIN_FEATURE_SIZE} at the bottleneck); a finer --spacing "
                         "keeps more")
    window = preset_kwargs.get("window_size", 4)
    planner = {"preset": preset, "gpu_memory_target_gb": gpu_memory_target_gb,
               "min_feature_size": MIN_FEATURE_SIZE, "max_dataset_fraction_per_batch": MAX_DATASET_FRACTION,
               "target_spacing_override": None if target_spacing_override is None else list(spacing),
               "stage_layout": {name: stage_layout(c.patch_size, c.network.kwargs["strides"], window)
                                for name, c in configs.items()}, "notes": notes}
    if pretrained is not None:
        planner["pretrained"] = {"source": pretrained.source, "kind": pretrained.kind, "layout": pretrained.layout,
                                 "stages_in_checkpoint": pretrained.num_stages, **pretrained.network_kwargs()}
    return Plans(
        dataset_name=dataset_name, plans_name=plans_name, channel_names=channels, labels=labels,
        file_ending=dataset_json["file_ending"],
        original_median_spacing=[float(v) for v in np.median(np.asarray(fingerprint["spacings"]), axis=0)],
        original_median_shape=[int(round(v)) for v in np.median(np.asarray(fingerprint["shapes_after_crop"]), axis=0)],
        foreground_intensity_properties=fingerprint["foreground_intensity_properties_per_channel"],
        configurations=configs, planner=planner,
        regions_class_order=[int(v) for v in dataset_json["regions_class_order"]] if has_regions_of(labels) else None,
    )

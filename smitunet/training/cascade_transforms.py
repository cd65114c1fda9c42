"""Batch transforms of a cascade's previous-stage input (nnU-Net's cascade augmentation).

In the style of batchgeneratorsv2, each transform draws its random parameters in ``get_parameters`` and
``apply`` is deterministic given them; they draw from numpy's global RNG, which ``PatchLoader`` seeds per batch,
so a batch stays a function of ``(seed, batch index)``.

- ``MovePreviousStageToData``: label channel 1 (the previous stage's segmentation, cut and augmented with the
  label) becomes one-hot input channels appended to ``data``, and leaves ``seg``.
- ``PerturbPreviousStage`` (training only): nnU-Net's ``ApplyRandomBinaryOperatorTransform`` (per sample with
  probability 0.4, each label in random order gets a dilation, erosion, closing or opening with a ball of radius
  1-8 voxels; voxels it adds are taken from the other labels) and
  ``RemoveRandomConnectedComponentFromOneHotEncodingTransform`` (per sample with probability 0.2, each label loses
  one random connected component smaller than 15 % of the patch). The cascade then learns not to copy its input.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from acvl_utils.morphology.morphology_helper import label_with_component_sizes
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage
from skimage.morphology import ball

from smitunet.preprocessing.cascade import one_hot

BINARY_OPERATORS = {"dilation": ndimage.binary_dilation, "erosion": ndimage.binary_erosion,
                    "closing": ndimage.binary_closing, "opening": ndimage.binary_opening}


class _ParametrisedTransform(AbstractTransform):
    def get_parameters(self, **data_dict) -> dict[str, Any]:
        return {}

    def apply(self, data_dict: dict, **params) -> dict:
        raise NotImplementedError

    def __call__(self, **data_dict) -> dict:
        return self.apply(data_dict, **self.get_parameters(**data_dict))


class MovePreviousStageToData(_ParametrisedTransform):
    """``seg[:, channel]`` (label values) -> one-hot channels over ``labels`` appended to ``data``."""

    def __init__(self, labels: Sequence[int], channel: int = 1):
        self.labels = [int(v) for v in labels]
        self.channel = channel

    def apply(self, data_dict: dict, **params) -> dict:
        data, seg = data_dict["data"], data_dict["seg"]
        previous = seg[:, self.channel]
        encoded = np.stack([one_hot(p, self.labels) for p in previous]).astype(data.dtype, copy=False)
        data_dict["data"] = np.concatenate([data, encoded], axis=1)
        data_dict["seg"] = np.delete(seg, self.channel, axis=1)
        return data_dict


class PerturbPreviousStage(_ParametrisedTransform):
    """Random morphology and connected-component removal on the last ``num_channels`` data channels (one-hot)."""

    def __init__(self, num_channels: int, p_binary_operator: float = 0.4, radius: tuple[int, int] = (1, 8),
                 p_remove_component: float = 0.2, max_component_fraction: float = 0.15):
        self.num_channels = int(num_channels)
        self.p_binary_operator, self.radius = p_binary_operator, radius
        self.p_remove_component, self.max_component_fraction = p_remove_component, max_component_fraction

    def get_parameters(self, **data_dict) -> dict[str, Any]:
        operations, removals = [], []
        for _ in range(data_dict["data"].shape[0]):
            ops = []
            if np.random.uniform() < self.p_binary_operator:
                for c in np.random.permutation(self.num_channels):
                    ops.append((int(c), str(np.random.choice(list(BINARY_OPERATORS))),
                                int(np.random.randint(self.radius[0], self.radius[1] + 1))))
            operations.append(ops)
            # which component goes is drawn as a fraction of the eligible ones, counted when applied
            removals.append([(c, float(np.random.uniform())) for c in range(self.num_channels)]
                            if np.random.uniform() < self.p_remove_component else [])
        return {"operations": operations, "removals": removals}

    def apply(self, data_dict: dict, operations=(), removals=()) -> dict:
        data = data_dict["data"]
        first = data.shape[1] - self.num_channels
        for b, ops in enumerate(operations):
            for c, name, radius in ops:
                _binary_operation(data[b, first:], c, BINARY_OPERATORS[name], radius)
        for b, picks in enumerate(removals):
            for c, u in picks:
                _remove_component(data[b, first + c], u, self.max_component_fraction)
        return data_dict


def _binary_operation(channels: np.ndarray, c: int, operation, radius: int) -> None:
    """``operation`` on one-hot channel ``c`` (in place); what it adds leaves the other channels."""
    mask = channels[c] > 0
    if not mask.any():
        return
    # Only the label's box grown by the radius can change: work there (identical result, much less work).
    box = tuple(slice(max(0, int(idx.min()) - radius - 1), int(idx.max()) + radius + 2)
                for idx in np.nonzero(mask))
    result = operation(mask[box], structure=ball(radius).astype(bool))
    added = result & ~mask[box]
    for other in range(channels.shape[0]):
        if other != c:
            channels[other][box][added] = 0
    channels[c][box] = result


def _remove_component(channel: np.ndarray, u: float, max_fraction: float) -> None:
    mask = channel > 0
    if not mask.any():
        return
    components, sizes = label_with_component_sizes(mask)
    eligible = [k for k, size in sorted(sizes.items()) if size < max_fraction * mask.size]
    if eligible:
        channel[components == eligible[int(u * len(eligible))]] = 0

"""Largest-connected-component postprocessing per label, decided on validation results (applied by
``smitunet.postprocessing``, which prediction shares)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component

from smitunet.evaluation.metrics import dice
from smitunet.imageio import read_image


def determine_postprocessing(pairs: Iterable[tuple[Path, Path]], foreground_labels: Sequence[int],
                             ignore_label: int | None = None) -> dict:
    """For each label, keep the largest component only where it raises the mean validation Dice.

    ``pairs`` are (reference file, prediction file). Removing voxels of one label never changes another
    label's Dice, so each label is decided on its own. Reference voxels of ``ignore_label`` are not scored.
    """
    before = {lab: [] for lab in foreground_labels}
    after = {lab: [] for lab in foreground_labels}
    for ref_file, pred_file in pairs:
        ref, _ = read_image(ref_file)
        pred, _ = read_image(pred_file)
        annotated = np.ones(ref.shape, bool) if ignore_label is None else ref != ignore_label
        for lab in foreground_labels:
            r, p = ref == lab, pred == lab
            before[lab].append(dice(p & annotated, r))
            # the largest component of the whole prediction is what prediction will keep; it is scored as above
            kept = remove_all_but_largest_component(p) if p.any() else p
            after[lab].append(dice(kept & annotated, r))
    per_label, keep = {}, []
    for lab in foreground_labels:
        b, a = _nanmean(before[lab]), _nanmean(after[lab])
        per_label[str(lab)] = {"dice_before": b, "dice_after": a, "num_cases": len(before[lab])}
        if not np.isnan(a) and (np.isnan(b) or a > b):
            keep.append(int(lab))
    return {"keep_largest_component": keep, "per_label": per_label}


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")

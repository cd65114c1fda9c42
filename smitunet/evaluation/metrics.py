"""Segmentation metrics per class, in physical units (mm) using the voxel spacing.

Arrays are (z, y, x) label maps; ``spacing`` is (z, y, x) in mm.

Conventions (documented because they decide the averages):
- Dice, IoU: both masks empty -> NaN (nothing to segment, nothing predicted: the case is left out of the
  class mean, as in nnU-Net v2); one empty -> 0.
- Surfaces are the voxels of a mask with at least one 6-neighbour outside it (mask minus its erosion;
  voxels on the image border count as surface). Distances are Euclidean between surface voxel centres.
- HD95 = max(95th percentile of pred->ref surface distances, 95th percentile of ref->pred), as MONAI's
  ``compute_hausdorff_distance(percentile=95)``. Both empty -> NaN; exactly one empty -> the diagonal of the
  image in mm (the largest distance possible, finite so that means and JSON stay usable).
- NSD (normalized surface Dice, Nikolov et al. 2021) with tolerance ``tau`` mm = (pred-surface voxels within
  tau of the ref surface + ref-surface voxels within tau of the pred surface) / (all surface voxels).
  Both empty -> NaN; exactly one empty -> 0.
- Ignore label (nnU-Net v2's ``ignore``): voxels where the reference holds it are unannotated; whatever is
  predicted there is dropped before any metric, so predictions that differ only there score the same.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

_CROSS = ndimage.generate_binary_structure(3, 1)


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives, false negatives of two boolean masks."""
    tp = int(np.count_nonzero(pred & ref))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    tp, fp, fn = confusion(pred, ref)
    return float("nan") if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    tp, fp, fn = confusion(pred, ref)
    return float("nan") if tp + fp + fn == 0 else tp / (tp + fp + fn)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of both masks; every surface voxel lies inside it, so distances computed there are exact."""
    coords = np.nonzero(a | b)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each pred-surface voxel to the ref surface, and from each ref-surface voxel to pred's.

    Both masks must be non-empty. Surfaces are taken on the full image (so the image border counts), then
    the work is cropped to the masks' joint bounding box.
    """
    box = _union_box(pred, ref)
    # erosion needs one voxel of context around the box to tell inner voxels from surface voxels
    grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, pred.shape))
    surf_p, surf_r = _surface(pred[grown]), _surface(ref[grown])
    dist_to_r = ndimage.distance_transform_edt(~surf_r, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)
    return dist_to_r[surf_p], dist_to_p[surf_r]


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def _distance_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                      tolerance_mm: float) -> tuple[float, float]:
    """(HD95, NSD) with the empty-mask conventions of the module docstring."""
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not has_p and not has_r:
        return float("nan"), float("nan")
    if not (has_p and has_r):
        return image_diagonal_mm(pred.shape, spacing), 0.0
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd = float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    within = np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm)
    return hd, float(within / (d_pr.size + d_rp.size))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    return _distance_metrics(pred, ref, spacing, 0.0)[0]


def normalized_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                            tolerance_mm: float) -> float:
    return _distance_metrics(pred, ref, spacing, tolerance_mm)[1]


def class_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                  nsd_tolerance_mm: float = 1.0) -> dict[str, float]:
    """All metrics for one pair of boolean masks."""
    tp, fp, fn = confusion(pred, ref)
    hd, nsd = _distance_metrics(pred, ref, spacing, nsd_tolerance_mm)
    return {"dice": dice(pred, ref), "iou": iou(pred, ref), "hd95": hd, "nsd": nsd, "tp": tp, "fp": fp, "fn": fn,
            "n_ref": tp + fn, "n_pred": tp + fp}


def label_mask(labels: np.ndarray, label: int | Sequence[int]) -> np.ndarray:
    """Boolean mask of one label, or of a region (a list of labels)."""
    if isinstance(label, (list, tuple)):
        return np.isin(labels, label)
    return labels == label


def case_metrics(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int | Sequence[int]],
                 spacing: Sequence[float], nsd_tolerance_mm: float = 1.0,
                 ignore_label: int | None = None) -> dict[str, dict[str, float]]:
    """Metrics per label for one case: ``{str(label): {"dice", "iou", "hd95", "nsd", "tp", ...}}``;
    voxels where ``ref == ignore_label`` count for nothing (see the module docstring)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    annotated = None if ignore_label is None else ref != ignore_label
    out = {}
    for lab in labels:
        p, r = label_mask(pred, lab), label_mask(ref, lab)
        if annotated is not None:
            p, r = p & annotated, r & annotated
        out[_label_key(lab)] = class_metrics(p, r, spacing, nsd_tolerance_mm)
    return out


def _label_key(label: int | Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in label) if isinstance(label, (list, tuple)) else str(int(label))


def mean_metrics(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per label, the NaN-ignoring mean over cases of each metric (counts are summed)."""
    if not per_case:
        return {}
    result: dict[str, dict[str, float]] = {}
    for key in per_case[0]:
        result[key] = {}
        for metric in per_case[0][key]:
            values = np.array([c[key][metric] for c in per_case], dtype=np.float64)
            if metric in ("tp", "fp", "fn", "n_ref", "n_pred"):
                result[key][metric] = float(values.sum())
            else:
                finite = values[~np.isnan(values)]
                result[key][metric] = float(finite.mean()) if finite.size else float("nan")
    return result


def foreground_mean(means: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over labels of the per-label means (NaN-ignoring), for the headline numbers."""
    out = {}
    for metric in ("dice", "iou", "hd95", "nsd"):
        values = np.array([m[metric] for m in means.values()], dtype=np.float64)
        values = values[~np.isnan(values)]
        out[metric] = float(values.mean()) if values.size else float("nan")
    return out

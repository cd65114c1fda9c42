"""Dataset fingerprint: what the planner needs to know about a dataset, from one read of every case.

The same read runs the per-case integrity checks (smitunet.dataset.integrity), so a faulty dataset is
reported before anything is written. Written as ``dataset_fingerprint.json``.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from smitunet.dataset.integrity import read_checked_case
from smitunet.plans import ignore_label_of, label_values_of
from smitunet.preprocessing.cropping import box_shape, crop, nonzero_bbox
from smitunet.utils.parallel import CasePool

from smitunet.contracts import FINGERPRINT_VERSION  # noqa: E402  (the record itself is contracts.Fingerprint)
SAMPLES_PER_CASE = 10_000  # foreground voxels sampled per case for the intensity statistics (as nnU-Net)
# Small cases are handed back with their arrays so preprocessing need not read them again (reading dominates
# on small images); the parent keeps at most CACHE_TOTAL_BYTES of them.
CACHE_CASE_BYTES = 8 << 20
CACHE_TOTAL_BYTES = 256 << 20


def case_seed(case: str) -> int:
    """A per-case seed independent of processing order and of PYTHONHASHSEED."""
    return zlib.crc32(case.encode())


def analyze_case(item: tuple[str, dict], allowed_labels: set[int], keep_arrays: bool = False,
                 ignore_label: int | None = None) -> dict[str, Any]:
    """Check one case and measure it: spacing, shapes, crop size and a seeded foreground intensity sample."""
    case, entry = item
    checked = read_checked_case(case, entry["images"], entry["label"], allowed_labels)
    result: dict[str, Any] = {"case": case, "problems": checked.problems, "warnings": checked.warnings}
    if not checked.ok:
        return result
    data, seg = checked.data, checked.seg
    box = nonzero_bbox(data)
    cropped_shape = box_shape(box)
    result.update(spacing=list(checked.geometry.spacing_zyx), shape_before_cropping=list(data.shape[1:]),
                  shape_after_cropping=cropped_shape,
                  relative_size_after_cropping=float(np.prod(cropped_shape) / np.prod(data.shape[1:])),
                  samples=_foreground_samples(case, data, seg, box, ignore_label))  # (array, is_foreground)
    if keep_arrays and data.nbytes + (seg.nbytes if seg is not None else 0) <= CACHE_CASE_BYTES:
        result["arrays"] = (data, seg, checked.geometry)
    return result


def _foreground_samples(case: str, data: np.ndarray, seg: np.ndarray | None, box,
                        ignore_label: int | None = None) -> tuple[np.ndarray, bool]:
    """(C, n) float32 intensities at up to SAMPLES_PER_CASE random labelled voxels, and whether they are
    foreground; a case without foreground gives a sample of its nonzero region instead (used only when the
    whole dataset has no foreground, so background never dilutes the CT statistics). Ignore-label voxels are
    unannotated, not foreground: they are left out."""
    rng = np.random.default_rng(case_seed(case))
    where = None
    if seg is not None:
        flat_seg = seg.reshape(-1)
        where = (flat_seg > 0) if ignore_label is None else (flat_seg > 0) & (flat_seg != ignore_label)
    if where is None or not where.any():
        region = crop(data, box).reshape(data.shape[0], -1)
        take = rng.choice(region.shape[1], size=min(SAMPLES_PER_CASE, region.shape[1]), replace=False)
        return region[:, np.sort(take)].astype(np.float32), False
    index = np.flatnonzero(where)
    if index.size > SAMPLES_PER_CASE:
        index = np.sort(rng.choice(index, size=SAMPLES_PER_CASE, replace=False))
    flat = data.reshape(data.shape[0], -1)
    return flat[:, index].astype(np.float32), True


def intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    s = samples.astype(np.float64)
    return {"mean": float(s.mean()), "median": float(np.median(s)), "std": float(s.std()),
            "min": float(s.min()), "max": float(s.max()),
            "percentile_00_5": float(np.percentile(s, 0.5)), "percentile_99_5": float(np.percentile(s, 99.5))}


def raw_signature(dataset_dir: Path, cases: dict[str, dict]) -> str:
    """Hash of the names, sizes and modification times of the dataset's files: detects a changed dataset."""
    h = hashlib.sha1()
    files = [dataset_dir / "dataset.json"] + [p for c in sorted(cases) for p in
                                             [*cases[c]["images"], cases[c]["label"]] if p is not None]
    for p in files:
        st = Path(p).stat()
        h.update(f"{Path(p).relative_to(dataset_dir) if Path(p).is_relative_to(dataset_dir) else p}"
                 f"|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def extract_fingerprint(dataset_dir: Path, dataset_json: dict, cases: dict[str, dict], pool: CasePool,
                        cache: dict | None = None) -> tuple[dict[str, Any], list[str], list[str]]:
    """Read and check every case; return (fingerprint, problems, warnings). Writes nothing.

    With ``cache`` (a dict), small cases' ``(data, seg, geometry)`` are stored in it for preprocessing.
    """
    allowed = set(label_values_of(dataset_json["labels"]))
    results, problems, warnings = {}, [], []
    work = partial(analyze_case, allowed_labels=allowed, keep_arrays=cache is not None,
                   ignore_label=ignore_label_of(dataset_json["labels"]))
    cached_bytes = 0
    for r in pool.imap(work, sorted(cases.items()), total=len(cases), desc="fingerprint"):
        problems += r["problems"]
        warnings += r["warnings"]
        arrays = r.pop("arrays", None)
        if arrays is not None and cached_bytes < CACHE_TOTAL_BYTES and not problems:
            cache[r["case"]] = arrays
            cached_bytes += sum(a.nbytes for a in arrays[:2] if a is not None)
        if not r["problems"]:
            results[r["case"]] = r
    if problems:
        return {}, sorted(problems), sorted(warnings)
    order = sorted(results)
    num_channels = len(dataset_json["channel_names"])
    use = [k for k in order if results[k]["samples"][1]] or order  # foreground cases, else all (fallback)
    per_channel = {}
    for c in range(num_channels):
        per_channel[str(c)] = intensity_statistics(np.concatenate([results[k]["samples"][0][c] for k in use]))
    fingerprint = {
        "version": FINGERPRINT_VERSION,
        "case_identifiers": order,
        "spacings": [results[k]["spacing"] for k in order],
        "shapes_before_crop": [results[k]["shape_before_cropping"] for k in order],
        "shapes_after_crop": [results[k]["shape_after_cropping"] for k in order],
        "median_relative_size_after_cropping": float(np.median([results[k]["relative_size_after_cropping"]
                                                                for k in order])),
        "foreground_intensity_properties_per_channel": per_channel,
        "raw_signature": raw_signature(dataset_dir, cases),
    }
    return fingerprint, [], sorted(warnings)

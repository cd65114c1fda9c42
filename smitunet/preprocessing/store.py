"""The preprocessed store: per case ``{case}.b2nd``, ``{case}_seg.b2nd`` (blosc2, see ``case_arrays``), ``{case}.json``,
``{case}_locations.npz``.

Cases are written in parallel, every file atomically, the properties JSON last: a case whose JSON exists with
the current ``preprocessing_hash`` is finished and a re-run skips it. The hash covers only what changes the
preprocessed arrays (spacing, normalization, intensity statistics, labels), not the patch or batch size (the patch
only sets the compressed layout, which any reader reads). A finished case of a store written before (``.npy``
arrays) counts as finished too: it is read as it is, and ``--clean`` rewrites it compressed.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from smitunet.contracts import CaseProperties
from smitunet.errors import SmitunetError
from smitunet.imageio import read_channels, read_image
from smitunet.plans import Plans
from smitunet.preprocessing import case_arrays
from smitunet.preprocessing.fingerprint import case_seed
from smitunet.utils.parallel import CasePool
from smitunet.preprocessing.preprocessor import preprocess_case
from smitunet.utils.files import load_json, make_dirs, save_json, save_npz

MAX_LOCATIONS_PER_CLASS = 10_000


def preprocessing_hash(plans: Plans, configuration: str) -> str:
    c = plans.configuration(configuration)
    relevant = {"spacing": c.spacing, "normalization": c.normalization, "use_mask_for_norm": c.use_mask_for_norm,
                "orders": [c.resampling_order_data, c.resampling_order_seg], "aniso": c.anisotropy_threshold,
                "intensities": plans.foreground_intensity_properties, "labels": plans.labels,
                # 1, not plans.version: plans version 2 (the 2d configuration) changed no preprocessed array.
                "channels": plans.channel_names, "version": 1}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def class_locations(seg: np.ndarray, classes: list[int], seed: int) -> dict[str, np.ndarray]:
    """``class_{k}``: int32 (N, 3) zyx coordinates of up to MAX_LOCATIONS_PER_CLASS voxels of class k."""
    rng = np.random.default_rng(seed)
    flat = seg.reshape(-1)
    out = {}
    for k in classes:
        index = np.flatnonzero(flat == k)
        if index.size > MAX_LOCATIONS_PER_CLASS:
            index = np.sort(rng.choice(index, size=MAX_LOCATIONS_PER_CLASS, replace=False))
        out[f"class_{k}"] = np.stack(np.unravel_index(index, seg.shape), axis=1).astype(np.int32)
    return out


def case_files(out_dir: Path, case: str) -> dict[str, Path]:
    """The case's files as stored now: arrays in whichever format is present (see ``case_arrays.data_file``)."""
    return {"data": case_arrays.data_file(out_dir, case), "seg": case_arrays.seg_file(out_dir, case),
            "properties": out_dir / f"{case}.json", "locations": out_dir / f"{case}_locations.npz"}


def is_finished(out_dir: Path, case: str, digest: str, labelled: bool = True) -> bool:
    files = case_files(out_dir, case)
    needed = files.values() if labelled else (files["data"], files["properties"])
    if not all(p.is_file() for p in needed):
        return False
    try:
        return load_json(files["properties"]).get("preprocessing_hash") == digest
    except (SmitunetError, AttributeError):  # unreadable or not a JSON object: redo the case
        return False


def _preprocess_one(item: tuple[str, dict, tuple | None], plans: Plans, configuration: str, out_dir: Path,
                    digest: str) -> str:
    case, entry, arrays = item
    if arrays is not None:  # already read by the fingerprint pass
        data, seg, geometry = arrays
    else:
        data, geometry = read_channels(entry["images"])
        seg = read_image(entry["label"])[0] if entry["label"] is not None else None
    data, seg, properties = preprocess_case(data, geometry, plans, configuration, seg)
    files = {**case_files(out_dir, case), **case_arrays.new_files(out_dir, case)}
    patch = plans.configuration(configuration).patch_size
    case_arrays.save_case_array(data, files["data"], patch)
    if seg is not None:  # an unlabelled case (imagesUnlabelled) has image and properties only
        case_arrays.save_case_array(seg, files["seg"], patch)
        save_npz(files["locations"], compressed=True,
                 **class_locations(seg[0], plans.foreground_labels, case_seed(case)))
    for legacy in case_arrays.legacy_files(out_dir, case):  # a rewritten case keeps no stale copy in the old format
        legacy.unlink(missing_ok=True)
    record = CaseProperties.from_dict({**properties, "preprocessing_hash": digest}, f"{case} properties")
    save_json(record.to_dict(), files["properties"])  # last: marks the case done
    return case


def preprocess_dataset(cases: dict[str, dict], plans: Plans, configuration: str, out_dir: Path,
                       pool: CasePool, force: bool = False, cache: dict | None = None) -> dict[str, Any]:
    """Preprocess every unfinished case (every case with ``force``) into ``out_dir``; returns counts.

    ``cache``: ``{case: (data, seg, geometry)}`` already read (see fingerprint.extract_fingerprint).
    """
    cache = cache or {}
    digest = preprocessing_hash(plans, configuration)
    make_dirs(out_dir)
    todo = [(c, cases[c], cache.get(c)) for c in sorted(cases)
            if force or not is_finished(out_dir, c, digest, labelled=cases[c]["label"] is not None)]
    work = partial(_preprocess_one, plans=plans, configuration=configuration, out_dir=out_dir, digest=digest)
    done = sum(1 for _ in pool.imap(work, todo, total=len(todo), desc=f"preprocess {configuration}"))
    return {"preprocessed": done, "skipped": len(cases) - len(todo)}

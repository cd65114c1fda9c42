"""Reading a raw dataset in nnU-Net v2's format.

``DatasetXXX_Name/dataset.json`` (``channel_names``, ``labels`` name->int, ``numTraining``, ``file_ending``;
a label named ``ignore``, the highest value, marks unannotated voxels; region-based labels list values, e.g.
``"whole": [1, 2, 3]``, with ``regions_class_order``),
``imagesTr/{case}_{XXXX}{ending}``, ``labelsTr/{case}{ending}``, optional ``imagesTs/``. As in nnU-Net v2 a
``dataset`` key may list each case's files explicitly (paths relative to the dataset folder).

Structural faults (missing channel, image without label, bad names, ...) are collected as one line per
problem so that the integrity check can report them all at once.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from smitunet.errors import DatasetIntegrityError, SmitunetError
from smitunet.plans import (foreground_regions_of, has_regions_of, ignore_label_of, label_values_of,
                            segmentation_labels_of)

# Case names become file names in the preprocessed store: no separators, no leading dot, no "..".
_CASE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_CHANNEL_FILE_RE = re.compile(r"^(.+)_(\d{4})$")

Cases = dict[str, dict[str, Any]]  # case -> {"images": [Path, ...], "label": Path | None}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def read_json_strict(path: Path) -> Any:
    """json.load that refuses duplicate keys (a silently dropped duplicate case is a lost case)."""
    try:
        with open(path) as f:
            return json.load(f, object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError:
        raise SmitunetError(f"{path}: not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SmitunetError(f"{path}: invalid JSON ({exc})") from None


def load_dataset_json(dataset_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``dataset.json``; every fault is one line naming the file and the field."""
    path = Path(dataset_dir) / "dataset.json"
    d = read_json_strict(path)
    if not isinstance(d, dict):
        raise SmitunetError(f"{path}: must hold a JSON object")
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in d:
            hint = " (this looks like an MSD dataset.json: convert it with smitunet_convert_msd)" \
                if key == "channel_names" and "modality" in d else ""
            raise SmitunetError(f"{path}: missing field {key!r}{hint}")
    _validate_channel_names(d["channel_names"], path)
    _validate_labels(d["labels"], path, d.get("regions_class_order"))
    n = d["numTraining"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SmitunetError(f"{path}: numTraining must be a positive integer, got {n!r}")
    ending = d["file_ending"]
    if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
        raise SmitunetError(f"{path}: file_ending must look like '.nii.gz', got {ending!r}")
    if "dataset" in d and not isinstance(d["dataset"], dict):
        raise SmitunetError(f"{path}: 'dataset' must map case names to {{'images': [...], 'label': ...}}")
    return d


def _validate_channel_names(channels: Any, path: Path) -> None:
    if not isinstance(channels, dict) or not channels:
        raise SmitunetError(f"{path}: channel_names must be a non-empty object like {{\"0\": \"CT\"}}")
    expected = [str(i) for i in range(len(channels))]
    if sorted(channels, key=lambda k: (len(k), k)) != expected:
        raise SmitunetError(f"{path}: channel_names keys must be 0..{len(channels) - 1}, got {list(channels)}")
    for key, name in channels.items():
        if not isinstance(name, str) or not name.strip():
            raise SmitunetError(f"{path}: channel_names[{key!r}] must be a non-empty string")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_labels(labels: Any, path: Path, regions_class_order: Any = None) -> None:
    if not isinstance(labels, dict) or not labels:
        raise SmitunetError(f"{path}: labels must be a non-empty object mapping names to integers")
    for name, value in labels.items():
        if isinstance(value, list) and name not in ("background", "ignore"):
            if not value or not all(_is_int(v) and v > 0 for v in value):
                raise SmitunetError(f"{path}: labels[{name!r}] is a region: it must list positive integers, "
                                    f"got {value!r}")
        elif not _is_int(value):
            raise SmitunetError(f"{path}: labels[{name!r}] must be an integer, got {value!r}")
    if labels.get("background") != 0:
        raise SmitunetError(f"{path}: labels must map 'background' to 0")
    if has_regions_of(labels):
        _validate_regions(labels, path, regions_class_order)
        return
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise SmitunetError(f"{path}: label values must be consecutive integers 0..{len(values) - 1}, got {values}")
    # nnU-Net v2: the ignore label is the highest value, so the real classes stay 0..K-1 (the network's channels).
    ignore = ignore_label_of(labels)
    if ignore is not None and ignore != values[-1]:
        raise SmitunetError(f"{path}: labels['ignore'] must be the highest label value ({values[-1]}), got {ignore}")


def _validate_regions(labels: dict, path: Path, order: Any) -> None:
    """nnU-Net v2 region-based labels: one output per region, ``regions_class_order`` says which value each
    region paints when predictions are turned back into a label map."""
    regions = foreground_regions_of(labels)
    if not isinstance(order, list) or len(order) != len(regions) or not all(_is_int(v) and v > 0 for v in order):
        raise SmitunetError(f"{path}: region-based labels need regions_class_order: one positive label value per "
                            f"region ({len(regions)}: {', '.join(regions)}), got {order!r}")
    ignore = ignore_label_of(labels)
    values = label_values_of(segmentation_labels_of(labels))
    if ignore is not None and ignore <= values[-1]:
        raise SmitunetError(f"{path}: labels['ignore'] must be the highest label value (above {values[-1]}), "
                            f"got {ignore}")


def case_name_problem(case: str) -> str | None:
    """None for a usable case name, else why not (names become file names in the preprocessed store)."""
    if not _CASE_NAME_RE.match(case) or ".." in case:
        return (f"case {case!r}: invalid case name (use letters, digits, '_', '-', '.'; "
                "no path separators, no leading dot, no '..')")
    return None


def path_escapes(relative: str, folder: Path) -> bool:
    """True when ``relative`` (as written in a JSON file) points outside ``folder``: absolute or via "..".
    Checked on the text, not on resolved symlinks, so datasets may symlink their files from elsewhere."""
    joined = os.path.normpath(os.path.join(str(folder), str(relative)))
    return os.path.isabs(str(relative)) or os.path.commonpath([joined, os.path.normpath(str(folder))]) != \
        os.path.normpath(str(folder))


def scan_training_cases(dataset_dir: str | Path, dataset_json: dict | None = None) -> tuple[Cases, list[str]]:
    """All training cases and the structural problems found, one line each (empty when all is well)."""
    dataset_dir = Path(dataset_dir)
    dj = dataset_json if dataset_json is not None else load_dataset_json(dataset_dir)
    if "dataset" in dj:
        cases, problems = _cases_from_dataset_key(dataset_dir, dj)
    else:
        cases, problems = _cases_from_folders(dataset_dir, dj, "imagesTr", "labelsTr")
    problems += _duplicate_ignoring_case(cases)
    if not problems and len(cases) != dj["numTraining"]:
        problems.append(f"{dataset_dir / 'dataset.json'}: numTraining is {dj['numTraining']} "
                        f"but {len(cases)} training case(s) were found")
    return cases, problems


def list_training_cases(dataset_dir: str | Path, dataset_json: dict | None = None) -> Cases:
    """``{case: {"images": [paths per channel], "label": path}}``; raises DatasetIntegrityError on faults."""
    cases, problems = scan_training_cases(dataset_dir, dataset_json)
    if problems:
        raise DatasetIntegrityError(problems)
    return cases


def list_test_cases(dataset_dir: str | Path, dataset_json: dict | None = None,
                    folder: str = "imagesTs") -> tuple[Cases, list[str]]:
    """Cases of ``folder`` (labels from the matching ``labels*`` folder when present, else None) and the
    problems found; ``folder="imagesTr"`` lists training images without requiring labels."""
    dataset_dir = Path(dataset_dir)
    dj = dataset_json if dataset_json is not None else load_dataset_json(dataset_dir)
    if not (dataset_dir / folder).is_dir():
        return {}, []
    labels_folder = folder.replace("images", "labels", 1)
    labels_folder = labels_folder if labels_folder != folder and (dataset_dir / labels_folder).is_dir() else None
    cases, problems = _cases_from_folders(dataset_dir, dj, folder, labels_folder, label_required=False)
    return cases, problems + _duplicate_ignoring_case(cases)


def _visible_files(folder: Path, ending: str) -> list[Path]:
    # Hidden files are skipped: macOS "._x.nii.gz" companions and our own temporary ".x.part" files.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith(ending))


def _cases_from_folders(dataset_dir: Path, dj: dict, images: str, labels: str | None,
                        label_required: bool = True) -> tuple[Cases, list[str]]:
    ending, num_channels = dj["file_ending"], len(dj["channel_names"])
    image_dir = dataset_dir / images
    if not image_dir.is_dir():
        return {}, [f"{image_dir}: folder not found"]
    channels: dict[str, dict[int, Path]] = {}
    problems: list[str] = []
    for path in _visible_files(image_dir, ending):
        m = _CHANNEL_FILE_RE.match(path.name[: -len(ending)])
        if not m:
            problems.append(f"{images}/{path.name}: name must be {{case}}_{{channel:04d}}{ending}")
            continue
        case, channel = m.group(1), int(m.group(2))
        if channel >= num_channels:
            problems.append(f"case {case}: {images}/{path.name} is channel {channel} but dataset.json "
                            f"declares {num_channels} channel(s)")
            continue
        channels.setdefault(case, {})[channel] = path
    cases: Cases = {}
    for case in sorted(channels):
        if (bad := case_name_problem(case)) is not None:
            problems.append(bad)
            continue
        missing = [f"{c:04d}" for c in range(num_channels) if c not in channels[case]]
        if missing:
            problems.append(f"case {case}: missing channel(s) {', '.join(missing)} in {images}/")
            continue
        cases[case] = {"images": [channels[case][c] for c in range(num_channels)], "label": None}
    if labels is not None:
        problems += _attach_labels(dataset_dir, labels, ending, cases, set(channels), label_required)
    return cases, problems


def _attach_labels(dataset_dir: Path, labels: str, ending: str, cases: Cases, image_cases: set[str],
                   label_required: bool) -> list[str]:
    label_dir, problems = dataset_dir / labels, []
    found = {p.name[: -len(ending)]: p for p in _visible_files(label_dir, ending)} if label_dir.is_dir() else {}
    for case in list(cases):
        if case in found:
            cases[case]["label"] = found[case]
        elif label_required:
            problems.append(f"case {case}: image without label ({labels}/{case}{ending} is missing)")
            del cases[case]
    for case in sorted(set(found) - image_cases):
        problems.append(f"case {case}: {labels}/{case}{ending} has no image in {labels.replace('labels', 'images')}/")
    return problems


def _cases_from_dataset_key(dataset_dir: Path, dj: dict) -> tuple[Cases, list[str]]:
    cases: Cases = {}
    problems: list[str] = []
    num_channels = len(dj["channel_names"])
    for case, entry in dj["dataset"].items():
        if (bad := case_name_problem(case)) is not None:
            problems.append(bad)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            problems.append(f"case {case}: dataset.json entry must be {{'images': [...], 'label': ...}}")
            continue
        if len(entry["images"]) != num_channels:
            problems.append(f"case {case}: lists {len(entry['images'])} image(s) but dataset.json declares "
                            f"{num_channels} channel(s)")
            continue
        paths, case_problems = [], []
        for rel in [*entry["images"], entry["label"]]:
            p = dataset_dir / str(rel)
            if path_escapes(str(rel), dataset_dir):
                case_problems.append(f"case {case}: path {rel!r} escapes the dataset folder")
            elif not p.is_file():
                case_problems.append(f"case {case}: file {rel!r} not found")
            paths.append(p)
        if case_problems:
            problems += case_problems
            continue
        cases[case] = {"images": paths[:-1], "label": paths[-1]}
    return cases, problems


def _duplicate_ignoring_case(cases: Cases) -> list[str]:
    # Two names that differ only in letter case collide on case-insensitive file systems (macOS, Windows).
    seen: dict[str, str] = {}
    problems = []
    for case in sorted(cases):
        key = case.lower()
        if key in seen:
            problems.append(f"case {case}: duplicate case name (same as {seen[key]} apart from letter case)")
        else:
            seen[key] = case
    return problems

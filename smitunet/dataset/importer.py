"""Make a raw dataset from loose image/label files (e.g. ../shared/data/ct_example -> a one-case CT dataset).

Images are written as ``.nii.gz`` through SimpleITK (geometry kept). When no label names are given, the
label values found in the files become the classes; gaps (e.g. organ ids 0, 1, 5, 117) are renumbered to
0..K-1 because the network needs consecutive classes, and ``dataset.json`` records the original value of
each class under ``original_label_values``.

Recipe for the CT example (see tests/test_dataset_importer.py)::

    create_raw_dataset(raw_dir(), 501, "CTExample",
                       {"ct_001": {"images": ["example_ct_sm.nii.gz"], "label": "example_seg.nii.gz"}},
                       channel_names={"0": "CT"})
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from smitunet.dataset.integrity import label_values
from smitunet.dataset.raw import case_name_problem
from smitunet.errors import SmitunetError
from smitunet.imageio import read_image, read_sitk, write_image
from smitunet.paths import dataset_folder_name
from smitunet.utils.files import save_json

ENDING = ".nii.gz"


def _write_as_nifti(source: Path, target: Path) -> None:
    if str(source).endswith(ENDING):
        shutil.copyfile(source, target)
        return
    import SimpleITK as sitk

    sitk.WriteImage(read_sitk(source), str(target), True)


def create_raw_dataset(raw_dir: str | Path, dataset_id: int, name: str, cases: dict[str, dict],
                       channel_names: dict[str, str], labels: dict[str, int] | None = None,
                       overwrite: bool = False) -> Path:
    """Write ``{case: {"images": [path per channel], "label": path}}`` as ``DatasetXXX_Name``; returns it."""
    final = Path(raw_dir) / dataset_folder_name(dataset_id, name)
    if final.exists() and not overwrite:
        raise SmitunetError(f"{final} already exists; pass overwrite=True to replace it")
    for case, entry in cases.items():
        if (bad := case_name_problem(case)) is not None:
            raise SmitunetError(bad)
        if len(entry["images"]) != len(channel_names):
            raise SmitunetError(f"case {case}: {len(entry['images'])} image(s) for {len(channel_names)} channel(s)")
    seg_values = {case: label_values(read_image(e["label"])[0])[0] for case, e in cases.items()}
    found = sorted(set().union(*seg_values.values()) | {0})
    if found[0] < 0:
        raise SmitunetError(f"label files hold negative value(s) {[v for v in found if v < 0]}")
    if labels is None:
        remap = {v: i for i, v in enumerate(found)}
        labels = {"background": 0, **{f"label_{v}": i for v, i in remap.items() if v != 0}}
    else:
        remap = None
    staging = final.parent / f".{final.name}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (staging / sub).mkdir(parents=True)
    for case, entry in cases.items():
        for c, image in enumerate(entry["images"]):
            _write_as_nifti(Path(image), staging / "imagesTr" / f"{case}_{c:04d}{ENDING}")
        seg, geometry = read_image(entry["label"])
        if remap is not None and any(v != i for v, i in remap.items()):
            lut = np.zeros(max(found) + 1, dtype=np.uint16)
            for v, i in remap.items():
                lut[v] = i
            seg = lut[seg.astype(np.intp)]
        write_image(seg.astype(np.uint8 if len(labels) < 256 else np.uint16), geometry,
                    staging / "labelsTr" / f"{case}{ENDING}")
    dataset_json = {"channel_names": channel_names, "labels": labels, "numTraining": len(cases),
                    "file_ending": ENDING, "name": name}
    if remap is not None:
        dataset_json["original_label_values"] = {str(i): int(v) for v, i in remap.items()}
    save_json(dataset_json, staging / "dataset.json")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final

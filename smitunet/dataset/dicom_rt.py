"""``smitunet_convert_dicom``: a folder of studies (each a CT or MR series plus an RTSTRUCT) -> a raw dataset.

Each sub-folder of the input is one study (its name becomes the case name); its files, in any sub-folders, are
read as DICOM: one CT/MR image series and one RT Structure Set. A structure-name mapping (JSON, label name -> the
ROI names accepted for it, matched case-insensitively) decides which ROIs become which label; labels get values
1, 2, ... in the mapping's order, and where ROIs overlap the label LATER in the mapping wins (list small
structures inside big ones after them). Several ROIs accepted for one label are united.

Every study is checked before anything is written: one image series (or the one the RTSTRUCT refers to), the
RTSTRUCT's Frame of Reference is the series', one slice orientation, evenly spaced slices, and every mapped label
has an ROI (else the study fails the conversion, or with ``--skip_missing`` is left out and reported). The dataset
is built in a hidden folder and renamed into place at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from smitunet.dataset.raw import case_name_problem, read_json_strict
from smitunet.errors import SmitunetError, cli_entry
from smitunet.paths import dataset_folder_name, raw_dir
from smitunet.utils.files import save_json
from smitunet.utils.log import logger

ENDING = ".nii.gz"
IMAGE_MODALITIES = {"CT": "CT", "MR": "MRI"}  # DICOM Modality -> channel name (CT normalisation for CT)
SPACING_TOLERANCE_MM = 0.01


@dataclass
class Study:
    case: str
    folder: Path
    image_files: list[Path]     # sorted along the slice normal
    modality: str
    rtstruct: object            # pydicom Dataset
    roi_numbers: dict[str, list[int]]   # label name -> ROI numbers united into it
    missing: list[str]          # mapped labels without an ROI


def load_mapping(mapping: str | Path | Mapping) -> dict[str, list[str]]:
    """Label name -> accepted ROI names (lower-cased), in the mapping's order; checked for ambiguity."""
    where = "structure mapping"
    if not isinstance(mapping, Mapping):
        where = str(mapping)
        mapping = read_json_strict(Path(mapping))
    if not isinstance(mapping, Mapping) or not mapping:
        raise SmitunetError(f"{where}: must be a JSON object {{label name: [ROI names]}} with at least one label")
    result, owner = {}, {}
    for label, names in mapping.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(label, str) or not label or label.lower() == "background":
            raise SmitunetError(f"{where}: invalid label name {label!r} (background is implicit)")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise SmitunetError(f"{where}: label {label!r} needs a non-empty list of ROI names")
        result[label] = [n.strip().lower() for n in names]
        for n in result[label]:
            if owner.setdefault(n, label) != label:
                raise SmitunetError(f"{where}: ROI name {n!r} is accepted for both {owner[n]!r} and {label!r}")
    return result


def _study_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                          for part in p.relative_to(folder).parts))


def _referenced_series(rtstruct) -> set[str]:
    return {str(s.SeriesInstanceUID) for f in getattr(rtstruct, "ReferencedFrameOfReferenceSequence", [])
            for st in getattr(f, "RTReferencedStudySequence", [])
            for s in getattr(st, "RTReferencedSeriesSequence", [])}


def _sorted_slices(case: str, slices: list[tuple[Path, object]]) -> list[Path]:
    """Slice files ordered along the normal; one orientation and an even spacing, else one line naming the study."""
    orientations = {tuple(round(float(v), 4) for v in h.ImageOrientationPatient) for _, h in slices}
    if len(orientations) != 1:
        raise SmitunetError(f"study {case}: the image series mixes {len(orientations)} slice orientations")
    row, col = np.asarray(next(iter(orientations))[:3]), np.asarray(next(iter(orientations))[3:])
    normal = np.cross(row, col)
    positions = [float(np.dot(normal, [float(v) for v in h.ImagePositionPatient])) for _, h in slices]
    order = np.argsort(positions)
    if len(slices) > 1:
        gaps = np.diff(np.asarray(positions)[order])
        if gaps.min() <= SPACING_TOLERANCE_MM or gaps.max() - gaps.min() > SPACING_TOLERANCE_MM:
            raise SmitunetError(f"study {case}: uneven slice spacing in the image series (gaps from "
                                f"{gaps.min():.3f} to {gaps.max():.3f} mm); resample it or remove the odd slices")
    return [slices[i][0] for i in order]


def scan_study(folder: Path, mapping: dict[str, list[str]]) -> Study:
    """Read the headers of one study and check it (no pixel data read); one line naming the study on a fault."""
    from smitunet.dicom_io import read_headers, roi_names, rtstruct_frames_of_reference

    case = folder.name
    if (bad := case_name_problem(case)) is not None:
        raise SmitunetError(f"study {case}: {bad}")
    files = _study_files(folder)
    pairs = list(zip(files, read_headers(files)))
    rtstructs = [h for _, h in pairs if str(getattr(h, "Modality", "")) == "RTSTRUCT"]
    if len(rtstructs) != 1:
        raise SmitunetError(f"study {case}: expected one RTSTRUCT, found {len(rtstructs)}")
    rt = rtstructs[0]
    series: dict[str, list[tuple[Path, object]]] = {}
    for path, h in pairs:
        if str(getattr(h, "Modality", "")) in IMAGE_MODALITIES:
            series.setdefault(str(h.SeriesInstanceUID), []).append((path, h))
    if len(series) > 1:  # several series: the one the structures were drawn on
        series = {uid: s for uid, s in series.items() if uid in _referenced_series(rt)}
    if len(series) != 1:
        raise SmitunetError(f"study {case}: expected one CT or MR image series (or one referenced by the RTSTRUCT), "
                            f"found {len(series)}")
    slices = next(iter(series.values()))
    frames = {str(h.FrameOfReferenceUID) for _, h in slices}
    rt_frames = rtstruct_frames_of_reference(rt)
    if len(frames) != 1 or rt_frames != frames:
        raise SmitunetError(f"study {case}: the RTSTRUCT's Frame of Reference "
                            f"({', '.join(sorted(rt_frames)) or 'none'}) is not the image series' "
                            f"({', '.join(sorted(frames))})")
    names = roi_names(rt)
    roi_numbers = {label: [n for n, name in names.items() if name.strip().lower() in accepted]
                   for label, accepted in mapping.items()}
    missing = [label for label, numbers in roi_numbers.items() if not numbers]
    return Study(case, folder, _sorted_slices(case, slices), str(slices[0][1].Modality), rt, roi_numbers, missing)


def _missing_report(study: Study, accepted: dict[str, list[str]]) -> str:
    wanted = "; ".join(f"{label}: {', '.join(accepted[label])}" for label in study.missing)
    present = ", ".join(sorted({str(r.ROIName) for r in getattr(study.rtstruct, "StructureSetROISequence", [])}))
    return (f"study {study.case}: missing structure(s) {', '.join(study.missing)} (accepted ROI names {wanted}; "
            f"the RTSTRUCT has {present or 'no ROIs'})")


def _convert_study(study: Study, labels: dict[str, int], images_dir: Path, labels_dir: Path) -> None:
    import SimpleITK as sitk

    from smitunet.dicom_io import read_headers, roi_mask, series_for_geometry
    from smitunet.imageio import Geometry, write_image

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in study.image_files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise SmitunetError(f"study {study.case}: the image series cannot be read "
                            f"({str(exc).strip().splitlines()[-1][:160]})") from None
    geometry = Geometry.of(image)
    # the headers must land one per slice of what SimpleITK read: contours then map onto the right planes
    series_for_geometry(read_headers(study.image_files), geometry, f"study {study.case}")
    label_map = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    for label, value in labels.items():  # mapping order: a later label overwrites an earlier one where they overlap
        for number in study.roi_numbers.get(label, []):
            label_map[roi_mask(study.rtstruct, number, geometry, f"study {study.case}")] = value
    sitk.WriteImage(image, str(images_dir / f"{study.case}_0000{ENDING}"), True)
    write_image(label_map, geometry, labels_dir / f"{study.case}{ENDING}")


def convert_dicom(studies_dir: str | Path, mapping: str | Path | Mapping, dataset_id: int, name: str, *,
                  output_raw: Path | None = None, overwrite: bool = False, skip_missing: bool = False) -> Path:
    """Convert a folder of DICOM + RTSTRUCT studies; returns the new raw dataset folder."""
    from smitunet.dicom_io import require_dicom

    require_dicom()
    studies_dir = Path(studies_dir)
    if not 1 <= int(dataset_id) <= 999:
        raise SmitunetError(f"dataset id must be 1..999, got {dataset_id}")
    if not name or case_name_problem(name) is not None or "/" in name:
        raise SmitunetError(f"invalid dataset name {name!r}")
    if not studies_dir.is_dir():
        raise SmitunetError(f"{studies_dir}: not a folder of studies")
    folders = sorted(p for p in studies_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SmitunetError(f"{studies_dir}: holds no study folders")
    accepted = load_mapping(mapping)
    labels = {label: value for value, label in enumerate(accepted, start=1)}

    studies = [scan_study(f, accepted) for f in folders]   # every check before anything is written
    modalities = {s.modality for s in studies}
    if len(modalities) != 1:
        raise SmitunetError(f"{studies_dir}: studies mix modalities {sorted(modalities)}; convert them separately")
    incomplete = [s for s in studies if s.missing]
    if incomplete and not skip_missing:
        more = f" (and {len(incomplete) - 1} more stud(y/ies))" if len(incomplete) > 1 else ""
        raise SmitunetError(f"{_missing_report(incomplete[0], accepted)}{more}; "
                            "pass --skip_missing to leave such studies out")
    for s in incomplete:
        logger.warning(f"skipping {_missing_report(s, accepted)}")
    studies = [s for s in studies if not s.missing]
    if not studies:
        raise SmitunetError(f"{studies_dir}: every study misses a mapped structure; nothing to convert")

    raw = output_raw or raw_dir()
    final = raw / dataset_folder_name(int(dataset_id), name)
    if final.exists() and not overwrite:
        raise SmitunetError(f"{final} already exists; pass --overwrite to replace it")
    staging = raw / f".{final.name}.converting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for sub in ("imagesTr", "labelsTr"):
            (staging / sub).mkdir(parents=True)
        for study in studies:
            _convert_study(study, labels, staging / "imagesTr", staging / "labelsTr")
        save_json({"channel_names": {"0": IMAGE_MODALITIES[modalities.pop()]},
                   "labels": {"background": 0, **labels}, "numTraining": len(studies), "file_ending": ENDING,
                   "name": name, "description": "converted from DICOM + RTSTRUCT by smitunet_convert_dicom",
                   "structure_mapping": accepted, "overlap_rule": "later label in the mapping wins",
                   "skipped_studies": {s.case: s.missing for s in incomplete}}, staging / "dataset.json")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_convert_dicom", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", required=True, help="folder of study folders, each with a CT/MR series and an RTSTRUCT")
    p.add_argument("-m", "--mapping", required=True,
                   help='structure mapping JSON: {"label": ["ROI name", ...], ...}; order = label values, '
                        "later labels win overlaps")
    p.add_argument("-d", type=int, required=True, help="dataset id (1..999)")
    p.add_argument("-n", "--name", required=True, help="dataset name (DatasetXXX_NAME)")
    p.add_argument("--skip_missing", action="store_true",
                   help="leave out (and report) studies missing a mapped structure instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same name")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from smitunet import api

    args = build_parser().parse_args(argv)
    out = api.convert_dicom(args.i, args.mapping, args.d, args.name, overwrite=args.overwrite,
                            skip_missing=args.skip_missing)
    print(f"converted {args.i} -> {out} ({json.loads((out / 'dataset.json').read_text())['numTraining']} case(s))")


if __name__ == "__main__":
    main()

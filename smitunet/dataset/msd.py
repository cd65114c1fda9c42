"""``smitunet_convert_msd``: a Medical Segmentation Decathlon task folder -> a raw dataset (nnU-Net v2 format).

MSD: ``TaskXX_Name/dataset.json`` (``modality``, ``labels`` int->name, ``training`` [{image, label}], ``test``),
4D images for multi-modal tasks. Single-channel files are copied byte for byte (already .nii.gz); 4D files
are split into one 3D file per channel with the spatial geometry kept. The dataset is built in a hidden
folder and renamed into place at the end, so an interrupted conversion leaves nothing half-done.
"""

from __future__ import annotations

import argparse
import re
import shutil
from functools import partial
from pathlib import Path

import SimpleITK as sitk

from smitunet.dataset.raw import case_name_problem, path_escapes, read_json_strict
from smitunet.errors import DatasetIntegrityError, SmitunetError, cli_entry
from smitunet.imageio import read_sitk
from smitunet.paths import dataset_folder_name, raw_dir
from smitunet.utils.parallel import CasePool, available_cores
from smitunet.utils.files import atomic_path, save_json
from smitunet.utils.log import logger

_TASK_RE = re.compile(r"^Task(\d+)_(.+)$")
ENDING = ".nii.gz"


def _msd_entries(task_dir: Path, msd: dict, key: str) -> tuple[list[tuple[str, Path, Path | None]], list[str]]:
    """[(case, image path, label path or None)] for ``training`` or ``test``, with the faults found."""
    entries, problems, seen = [], [], set()
    for item in msd.get(key, []):
        image_rel = item.get("image") if isinstance(item, dict) else item
        label_rel = item.get("label") if isinstance(item, dict) else None
        if not isinstance(image_rel, str) or not image_rel.endswith(ENDING):
            problems.append(f"{task_dir / 'dataset.json'}: {key} entry {item!r} has no .nii.gz image")
            continue
        case = Path(image_rel).name[: -len(ENDING)]
        if (bad := case_name_problem(case)) is not None:
            problems.append(bad)
            continue
        if case in seen:
            problems.append(f"case {case}: listed twice in dataset.json {key}")
            continue
        seen.add(case)
        rels = [image_rel] + ([label_rel] if label_rel is not None else [])
        paths = [task_dir / r for r in rels]
        for rel, p in zip(rels, paths):
            if path_escapes(rel, task_dir):
                problems.append(f"case {case}: path {rel} escapes the task folder")
            elif not p.is_file():
                problems.append(f"case {case}: file {rel} not found")
        entries.append((case, paths[0], paths[1] if label_rel is not None else None))
    return entries, problems


def _write_channels(image_path: Path, out_dir: Path, case: str, num_channels: int) -> None:
    if num_channels == 1:
        with atomic_path(out_dir / f"{case}_0000{ENDING}", suffix=ENDING) as tmp:
            shutil.copyfile(image_path, tmp)
        return
    image = read_sitk(image_path)
    size = list(image.GetSize())
    if image.GetDimension() != 4 or size[3] != num_channels:
        raise SmitunetError(f"case {case}: {image_path} should be 4D with {num_channels} channels, "
                            f"got size {tuple(size)}")
    for c in range(num_channels):
        volume = sitk.Extract(image, size[:3] + [0], [0, 0, 0, c])  # keeps the 3D spacing/origin/direction
        with atomic_path(out_dir / f"{case}_{c:04d}{ENDING}", suffix=ENDING) as tmp:
            sitk.WriteImage(volume, str(tmp), True)


def _convert_case(job: tuple, num_channels: int) -> str:
    case, image, label, image_dir, label_dir = job
    _write_channels(image, image_dir, case, num_channels)
    if label is not None:
        with atomic_path(label_dir / f"{case}{ENDING}", suffix=ENDING) as tmp:
            shutil.copyfile(label, tmp)
    return case


def convert_msd(task_dir: str | Path, dataset_id: int | None = None, output_raw: Path | None = None,
                overwrite: bool = False, num_processes: int | None = None) -> Path:
    """Convert an MSD task folder; returns the new raw dataset folder."""
    task_dir = Path(task_dir)
    m = _TASK_RE.match(task_dir.resolve().name)
    if not m:
        raise SmitunetError(f"{task_dir}: folder name must look like TaskXX_Name (e.g. Task04_Hippocampus)")
    dataset_id = int(m.group(1)) if dataset_id is None else int(dataset_id)
    if not 1 <= dataset_id <= 999:
        raise SmitunetError(f"dataset id must be 1..999, got {dataset_id}")
    msd = read_json_strict(task_dir / "dataset.json")
    for key in ("modality", "labels", "training"):
        if not isinstance(msd, dict) or key not in msd:
            raise SmitunetError(f"{task_dir / 'dataset.json'}: missing MSD field {key!r}")
    channel_names = {str(k): str(v) for k, v in sorted(msd["modality"].items(), key=lambda kv: int(kv[0]))}
    labels = {str(name): int(value) for value, name in sorted(msd["labels"].items(), key=lambda kv: int(kv[0]))}
    labels = {("background" if v == 0 else k): v for k, v in labels.items()}
    if len(labels) != len(msd["labels"]):
        raise SmitunetError(f"{task_dir / 'dataset.json'}: label names must be unique, got {msd['labels']}")
    training, problems = _msd_entries(task_dir, msd, "training")
    if problems:
        raise DatasetIntegrityError(problems)
    # Test images are optional extras: unusable entries are skipped with a note, not fatal.
    test, test_problems = _msd_entries(task_dir, msd, "test")
    if test_problems:
        logger.warning(f"note: skipping {len(test_problems)} test entr(y/ies): {test_problems[0]}")
        bad = {line.split(":")[0].removeprefix("case ") for line in test_problems}
        test = [t for t in test if t[0] not in bad]

    raw = output_raw or raw_dir()
    final = raw / dataset_folder_name(dataset_id, m.group(2))
    if final.exists() and not overwrite:
        raise SmitunetError(f"{final} already exists; pass --overwrite to replace it")
    staging = raw / f".{final.name}.converting"
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if test else ()):
        (staging / sub).mkdir(parents=True)
    jobs = [(case, image, label, staging / "imagesTr", staging / "labelsTr") for case, image, label in training]
    jobs += [(case, image, None, staging / "imagesTs", None) for case, image, _ in test]
    with CasePool(num_processes or available_cores()) as pool:
        for _ in pool.imap(partial(_convert_case, num_channels=len(channel_names)), jobs, total=len(jobs),
                           desc="convert"):
            pass
    save_json({"channel_names": channel_names, "labels": labels, "numTraining": len(training),
               "file_ending": ENDING, "name": msd.get("name", m.group(2)),
               "description": msd.get("description", ""), "reference": msd.get("reference", ""),
               "licence": msd.get("licence", msd.get("license", "")), "converted_from": f"MSD {task_dir.name}"},
              staging / "dataset.json")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_convert_msd", description=__doc__.splitlines()[0])
    p.add_argument("-i", required=True, help="MSD task folder, e.g. Task04_Hippocampus")
    p.add_argument("-d", type=int, default=None, help="dataset id (default: the task number)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same name")
    p.add_argument("-np", type=int, default=None, help="worker processes (default: available cores)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = convert_msd(args.i, args.d, overwrite=args.overwrite, num_processes=args.np)
    print(f"converted {args.i} -> {out}")


if __name__ == "__main__":
    main()

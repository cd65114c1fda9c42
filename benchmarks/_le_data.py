"""Data side of the label-efficiency benchmark: staging the dataset, the labelled subsets and evaluation cases,
the splits both tools read, and the pretraining images.

Case selection (the label-efficiency literature's convention on the Left Atrium):
- with ``case_order.txt`` in the dataset: the evaluation cases are its last ``num_eval`` entries, and N labelled
  cases are its first N;
- without: one seeded permutation of the cases gives the same roles (evaluation cases last).
Evaluation cases are never labelled in any run, and their images are left out of pretraining unless asked.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def dataset_kind(source: Path) -> str:
    """"nnunetv2" (channel_names in dataset.json) or "msd" (modality + training list)."""
    meta = json.loads((source / "dataset.json").read_text())
    if "channel_names" in meta:
        return "nnunetv2"
    if "modality" in meta and "training" in meta:
        return "msd"
    raise SystemExit(f"error: {source / 'dataset.json'}: neither an nnU-Net v2 nor an MSD dataset.json")


def dataset_name(source: Path, dataset_id: int) -> str:
    """The ``DatasetXXX_Name`` both tools use for ``source``."""
    name = source.name
    if name.startswith("Dataset") and name[7:10].isdigit():
        name = name[11:]
    elif name.startswith("Task") and "_" in name:
        name = name.split("_", 1)[1]
    return f"Dataset{dataset_id:03d}_{name}"


def case_order(raw: Path, cases: list[str], seed: int) -> tuple[list[str], str]:
    """All cases in selection order, and where the order came from."""
    listed = raw / "case_order.txt"
    if listed.is_file():
        order = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        if sorted(order) != sorted(cases):
            raise SystemExit(f"error: {listed} does not list exactly the {len(cases)} training cases")
        return order, "case_order.txt"
    permutation = np.random.default_rng(seed).permutation(len(cases))
    return [sorted(cases)[i] for i in permutation], f"seeded permutation (seed {seed})"


def select(order: list[str], labelled: list[int], num_eval: int) -> tuple[list[str], dict[int, list[str]]]:
    """(evaluation cases, {N: the first N labelled cases}); the pool of labellable cases is everything else."""
    if num_eval >= len(order):
        raise SystemExit(f"error: --num_eval {num_eval} leaves no case to label ({len(order)} cases)")
    evaluation, pool = order[-num_eval:], order[:-num_eval]
    too_many = [n for n in labelled if n > len(pool)]
    if too_many:
        raise SystemExit(f"error: --labelled {too_many}: only {len(pool)} cases are not evaluation cases")
    return sorted(evaluation), {n: sorted(pool[:n]) for n in labelled}


def fold_for(splits_path: Path, train: list[str], val: list[str]) -> int:
    """Index of the fold that trains on ``train`` and validates on ``val`` in ``splits_final.json``, appending it
    when absent (the file only grows, so folds of earlier runs keep their index)."""
    splits = json.loads(splits_path.read_text()) if splits_path.is_file() else []
    wanted = {"train": sorted(train), "val": sorted(val)}
    for i, split in enumerate(splits):
        if sorted(split["train"]) == wanted["train"] and sorted(split["val"]) == wanted["val"]:
            return i
    splits.append(wanted)
    splits_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = splits_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(splits, indent=1))
    tmp.replace(splits_path)
    return len(splits) - 1


def link_images(raw: Path, cases: list[str], target: Path) -> Path:
    """A folder of links to the cases' channel images (``smitunet_pretrain -i`` reads it; labels never)."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for case in cases:
        for image in sorted((raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].*")):
            wanted.add(image.name)
            link = target / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    for stale in [p for p in target.iterdir() if p.name not in wanted]:
        stale.unlink()
    return target


def largest_component_dice(reference: Path, predictions: Path, labels: list[int]) -> dict[str, float] | None:
    """Per-case Dice (mean over ``labels``) after each label of the prediction keeps only its largest connected
    component: the post-processing the Left Atrium literature applies before scoring (UA-MT, BCP), fixed in
    advance rather than chosen on the evaluation cases. None when the predictions are gone (an earlier machine)."""
    import SimpleITK as sitk
    import numpy as np

    from smitunet.evaluation.evaluate import match_cases
    from smitunet.evaluation.metrics import dice
    from smitunet.postprocessing import keep_largest_component

    if not predictions.is_dir():
        return None
    scores = {}
    for case, ref_file, pred_file in match_cases(reference, predictions, allow_subset=True):
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_file)))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_file)))
        for label in labels:
            keep_largest_component(pred, label)
        scores[case] = float(np.mean([dice(pred == label, ref == label) for label in labels]))
    return scores or None

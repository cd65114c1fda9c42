"""Sparse labels: what an ignore label buys on the Left Atrium (CPU protocol of ``label_efficiency.py``).

The first N cases of ``case_order.txt`` are labelled on only ``--keep`` of their axial slices; every other voxel
of their label files is the ignore label (nnU-Net v2's schema: the highest label, named ``ignore``). Annotated
slices come in slabs of ``--slab`` raw slices, so that they survive the resampling to the protocol's spacing
(LA is 0.625 mm, the CPU protocol 1.25 mm). Each run trains ``SMITTrainer`` from scratch with the plans, budget
and evaluation cases of the label-efficiency work folder, and is compared with the fully labelled runs of the same
seeds recorded there (row ``scratch``): the same number of cases (what sparse labels cost) and, with ``--labelled
40``, the same number of annotated slices as 8 fully labelled cases (what sparse labels buy).

    python benchmarks/label_efficiency.py --protocol cpu --labelled 8 --rows scratch:0    # the work folder first
    python benchmarks/sparse_labels.py --labelled 8 40 --seeds 0

Resumable: finished runs are recorded in ``sparse_labels.json`` in the work folder and skipped on a rerun. The
table goes to ``benchmarks/results/sparse_labels_<dataset>_cpu.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _le_data as data  # noqa: E402
import _le_report as report  # noqa: E402
from _jobs import Job, run_jobs  # noqa: E402
from _smitunet_env import work_env  # noqa: E402
from _report import fmt, machine_description, markdown_table, now_utc, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE_NAME = "Dataset010_LeftAtrium"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "le_010_cpu",
                   help="the label-efficiency work folder (its raw data, plans, budget and scratch runs)")
    p.add_argument("--dataset_id", type=int, default=110, help="id of the derived sparse dataset")
    p.add_argument("--labelled", type=int, nargs="+", default=[8, 40])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--keep", type=float, default=0.2, help="share of each labelled case's axial slices annotated")
    p.add_argument("--slab", type=int, default=2, help="consecutive raw slices per annotated slab")
    p.add_argument("--num_eval", type=int, default=20)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def sparse_label(labels: np.ndarray, ignore: int, keep: float, slab: int) -> np.ndarray:
    """Every voxel outside the kept axial slabs becomes ``ignore``: slab k (raw slices k*slab ... k*slab+slab-1)
    is kept when k is a multiple of round(1 / keep), so the annotated slices are spread evenly."""
    period = max(1, int(round(1 / keep)))
    kept = (np.arange(labels.shape[0]) // slab) % period == 0
    out = np.full_like(labels, ignore)
    out[kept] = labels[kept]
    return out


def build_dataset(args, source: Path, name: str, sparse_cases: list[str], other_cases: list[str]) -> Path:
    raw = args.work / "raw" / name
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    dj = json.loads((source / "dataset.json").read_text())
    ignore = max(int(v) for v in dj["labels"].values()) + 1
    dj["labels"] = dict(dj["labels"], ignore=ignore)
    dj["description"] = (f"{SOURCE_NAME} with {args.keep:.0%} of the axial slices of {len(sparse_cases)} cases "
                         f"annotated (slabs of {args.slab}), the rest ignore")
    images = raw / "imagesTr"
    images.mkdir(exist_ok=True)
    ending = dj.get("file_ending", ".nii.gz")
    for case in sparse_cases + other_cases:
        for image in sorted((source / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")):
            if not (images / image.name).exists():
                (images / image.name).symlink_to(image.resolve())
        target = raw / "labelsTr" / f"{case}{ending}"
        if target.exists():
            continue
        original = source / "labelsTr" / f"{case}{ending}"
        if case in other_cases:  # evaluation cases keep their full labels (they are scored, never trained on)
            target.symlink_to(original.resolve())
            continue
        image = sitk.ReadImage(str(original))
        out = sitk.GetImageFromArray(sparse_label(sitk.GetArrayFromImage(image), ignore, args.keep, args.slab))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(target.with_name(target.name + ".tmp" + ending)), useCompression=True)
        os.replace(target.with_name(target.name + ".tmp" + ending), target)
    # a folder built before for more labelled cases keeps them (the first N of a longer list are the same cases)
    dj["numTraining"] = len(list((raw / "labelsTr").glob(f"*{ending}")))
    (raw / "dataset.json").write_text(json.dumps(dj, indent=1))
    return raw


def env_for(args, results: str) -> dict[str, str]:
    return work_env(args.work, results, args.threads)


def prepare_plans(args, name: str, ignore_labels: dict) -> None:
    """The label-efficiency plans (same spacing, patch, batch, network), with the ignore label added."""
    plans = json.loads((args.work / "preprocessed" / SOURCE_NAME / "smitunetPlans.json").read_text())
    plans["dataset_name"] = name
    plans["labels"] = ignore_labels
    target = args.work / "preprocessed" / name / "smitunetPlans.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(plans, indent=1))


def main(argv=None) -> None:
    args = parse_args(argv)
    source = args.work / "raw" / SOURCE_NAME
    le = json.loads((args.work / "label_efficiency.json").read_text())
    budget = le["budget"]
    cases = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").glob("*.nii.gz"))
    order, _ = data.case_order(source, cases, 0)
    evaluation, subsets = data.select(order, sorted(args.labelled), args.num_eval)
    name = f"Dataset{args.dataset_id:03d}_LeftAtriumSparse"
    raw = build_dataset(args, source, name, subsets[max(args.labelled)], evaluation)
    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    prepare_plans(args, name, labels)
    log_dir = args.work / "logs"
    run_jobs([Job("sparse_preprocess", ["smitunet_plan_and_preprocess", "-d", str(args.dataset_id),
                                         "--use_existing_plans", "-c", "3d_fullres", "-np", "2"],
                  env_for(args, "results"), log_dir / "sparse_preprocess.log")], 1)
    splits = args.work / "preprocessed" / name / "splits_final.json"
    folds = {n: data.fold_for(splits, subsets[n], evaluation) for n in args.labelled}

    results_path = args.work / "sparse_labels.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    jobs = []
    for n in args.labelled:
        for seed in args.seeds:
            key = f"sparse|L{n}|s{seed}"
            if key in results["runs"]:
                continue
            job = Job(key, ["smitunet_train", str(args.dataset_id), "3d_fullres", str(folds[n]), "--epochs",
                            str(budget["smitunet_epochs"]), "--iters_per_epoch", str(budget["iters_per_epoch"]),
                            "--num_workers", "1", "--seed", str(seed), "--device", "cpu", "--disable_tta"],
                      env_for(args, f"results_sparse_s{seed}"), log_dir / f"sparse_L{n}_s{seed}.log")
            job.fold_dir = (args.work / f"results_sparse_s{seed}" / name / "SMITTrainer__smitunetPlans__3d_fullres"
                            / f"fold_{folds[n]}")
            jobs.append(job)

    def record(job: Job, seconds: float) -> None:
        summary = json.loads((job.fold_dir / "validation" / "summary.json").read_text())
        lcc = data.largest_component_dice(raw / "labelsTr", job.fold_dir / "validation", [1])
        results["runs"][job.name] = {"dice": summary["foreground_mean"]["dice"],
                                     "hd95": summary["foreground_mean"]["hd95"], "wall_s": seconds,
                                     "dice_lcc": float(np.mean(list(lcc.values()))), "model_folder": str(job.fold_dir)}
        results_path.write_text(json.dumps(results, indent=1))
        print(f"  {job.name}: Dice {100 * results['runs'][job.name]['dice']:.2f}", flush=True)

    for job in [j for j in jobs if finished(j, budget["smitunet_epochs"])]:  # trained before this invocation
        record(job, None)
        jobs.remove(job)
    run_jobs(jobs, args.jobs, on_done=record)
    write_table(args, results, le, subsets)


def finished(job: Job, epochs: int) -> bool:
    metrics = job.fold_dir / "metrics.json"
    return ((job.fold_dir / "validation" / "summary.json").is_file() and metrics.is_file()
            and len(json.loads(metrics.read_text())) >= epochs)


def write_table(args, results: dict, le: dict, subsets: dict) -> None:
    """Sparse rows beside the fully labelled scratch runs of the same seeds (ratios against full labels on 8)."""
    full = {report.parse_key(k): r for k, r in le["runs"].items() if k.startswith("scratch|")}
    base = [full[("scratch", min(args.labelled), s)]["dice"] for s in args.seeds if ("scratch", min(args.labelled), s) in full]
    base_mean = float(np.mean(base)) if base else float("nan")
    rows = []
    for n in sorted({min(args.labelled), *args.labelled}):
        for kind in ("full", "sparse"):
            runs = ([full[("scratch", n, s)] for s in args.seeds if ("scratch", n, s) in full] if kind == "full"
                    else [results["runs"][f"sparse|L{n}|s{s}"] for s in args.seeds if f"sparse|L{n}|s{s}" in results["runs"]])
            if not runs:
                continue
            share = 1.0 if kind == "full" else args.keep
            dice = float(np.mean([r["dice"] for r in runs]))
            lcc = [r["dice_lcc"] for r in runs if r.get("dice_lcc") is not None]
            rows.append([f"{kind}, {n} cases", f"{n * share:g}", len(runs), fmt(100 * dice),
                         fmt(float(np.mean([r["hd95"] for r in runs]))), fmt(dice / base_mean),
                         f"{fmt(100 * float(np.mean(lcc)))} ({len(lcc)} of {len(runs)})" if lcc else "–"])
    md = "\n".join([
        f"# Sparse labels on the Left Atrium (CPU protocol), {now_utc()}",
        "",
        f"Labelled cases are the first N of case_order.txt; sparse: {args.keep:.0%} of each case's axial slices "
        f"annotated (slabs of {args.slab} raw slices at 0.625 mm), the rest the ignore label. Same plans, budget "
        f"({le['budget']['smitunet_epochs']} x {le['budget']['iters_per_epoch']} iterations) and {args.num_eval} "
        f"evaluation cases as label_efficiency.py; the full-label rows are its scratch runs of the same seeds "
        f"({', '.join(map(str, args.seeds))}).",
        "Dice + LCC: after the largest connected component is kept (the LA literature's scoring), over the runs "
        "whose predictions were still on the machine.",
        "",
        markdown_table(["labels", "case-equivalents annotated", "seeds", "Dice", "HD95 (mm)",
                        f"Dice / full {min(args.labelled)}", "Dice + LCC"], rows),
    ])
    write_results(f"sparse_labels_{SOURCE_NAME}_cpu", md,
                  {"runs": results["runs"], "rows": rows, "machine": machine_description(),
                   "keep": args.keep, "slab": args.slab, "labelled": args.labelled, "seeds": args.seeds})
    print(md)


if __name__ == "__main__":
    main()

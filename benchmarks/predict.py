"""Prediction benchmark: seconds per case, total / pure-forward time, and peak RSS on a CT-sized volume.

Part 1 (Hippocampus): trains a tiny smit_tiny model for a few iterations on a subset of
../shared/data/Task04_Hippocampus (accuracy is not the point here), then predicts held-out cases with and
without mirroring TTA and prints seconds per case and the ratio of total prediction time to the network
forward time of the tiles it ran (target <= 1.15).
Part 2 (memory): predicts a generated 512x512x300 volume on the CPU in a child process and prints its peak
RSS, once without resampling (argmax path) and once with resampling back to an anisotropic input spacing
(probability path).

    python benchmarks/predict.py [--work_dir DIR] [--device cpu|cuda] [--skip_big] [--big_step 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "Task04_Hippocampus"


def set_folders(work: Path) -> None:
    for kind in ("raw", "preprocessed", "results"):
        (work / kind).mkdir(parents=True, exist_ok=True)
        os.environ[f"smitunet_{kind}"] = str(work / kind)


def hippocampus_subset(work: Path, num_train: int, num_test: int) -> Path:
    """Raw-format Dataset004_Hippocampus with ``num_train`` labelled cases; ``num_test`` more go to imagesTs."""
    from smitunet.utils.files import save_json

    dataset = work / "raw" / "Dataset004_Hippocampus"
    images = sorted((HIPPOCAMPUS / "imagesTr").glob("hippocampus_*.nii.gz"))[: num_train + num_test]
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        case = img.name[: -len(".nii.gz")]
        if i < num_train:
            shutil.copy(img, dataset / "imagesTr" / f"{case}_0000.nii.gz")
            shutil.copy(HIPPOCAMPUS / "labelsTr" / img.name, dataset / "labelsTr" / img.name)
        else:
            shutil.copy(img, dataset / "imagesTs" / f"{case}_0000.nii.gz")
    save_json({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
               "numTraining": num_train, "file_ending": ".nii.gz"}, dataset / "dataset.json")
    return dataset


def train_tiny(device: str, iterations: int) -> Path:
    from smitunet.preprocessing.cli import main as preprocess_main
    from smitunet.training.cli import main as train_main

    preprocess_main(["-d", "4", "--preset", "smit_tiny", "-c", "3d_fullres"])
    train_main(["4", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", str(iterations), "--device", device,
                "--num_workers", "0"])
    return Path(os.environ["smitunet_results"]) / "Dataset004_Hippocampus" / "SMITTrainer__smitunetPlans__3d_fullres"


def time_prediction(model_dir: Path, images: Path, out: Path, device: str, tta: bool, npp: int) -> dict:
    from smitunet.inference.predictor import PredictionOptions, Predictor

    options = PredictionOptions(use_tta=tta, device=device, num_processes=npp, progress=False)
    predictor = Predictor.from_model_folder(model_dir, ["0"], options=options)
    warmup = out.parent / f"{out.name}_warmup_input"  # one case: first-call costs stay out of the timing
    warmup.mkdir(parents=True, exist_ok=True)
    first = sorted(images.iterdir())[0]
    if not (warmup / first.name).exists():
        (warmup / first.name).symlink_to(first)
    predictor.predict_folder(warmup, out / "warmup")
    options.stats.clear()
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    written = predictor.predict_folder(images, out)
    total = time.perf_counter() - start
    forward = options.stats["forward_seconds"]
    return {"cases": len(written), "total": total, "forward": forward, "tiles": options.stats["tiles"],
            "passes": options.stats["forward_passes"]}


def check_geometry_round_trips(model_dir: Path, images: Path, work: Path, device: str) -> None:
    """With the trained Hippocampus model: raw-named, plain-file and DICOM inputs keep their exact geometry."""
    from smitunet.imageio import Geometry, read_image, read_sitk
    from smitunet.inference.predictor import PredictionOptions, Predictor

    plain = work / "plain_inputs"
    plain.mkdir(exist_ok=True)
    for f in sorted(images.iterdir())[:3]:
        (plain / f.name.replace("_0000", "")).symlink_to(f)
    dicom = REPO.parent / "shared" / "data" / "dicom_example" / "hippocampus_crop_study1"
    inputs = {"raw-named": images, "plain files": plain}
    if dicom.is_dir():
        inputs["DICOM series"] = dicom
    predictor = Predictor.from_model_folder(model_dir, ["0"], options=PredictionOptions(
        use_tta=False, device=device, num_processes=0, progress=False))
    for kind, inp in inputs.items():
        out = work / f"geometry_{kind.replace(' ', '_')}"
        written = predictor.predict_folder(inp, out)
        sources = [dicom] if kind == "DICOM series" else sorted(inp.iterdir())
        bad = [w.name for w, src in zip(sorted(written), sources)
               if read_image(w)[1].matches(Geometry.of(read_sitk(src)), tol=1e-6) is not None]
        print(f"geometry round trip, {kind}: {len(written) - len(bad)}/{len(written)} outputs match their input"
              + (f"; MISMATCH: {bad}" if bad else ""))


def part_hippocampus(args, work: Path) -> None:
    import torch

    hippocampus_subset(work, args.num_train, args.num_test)
    model_dir = train_tiny(args.device, args.train_iterations)
    images = work / "raw" / "Dataset004_Hippocampus" / "imagesTs"
    print(f"\nHippocampus, {args.num_test} cases, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'TTA':>5} {'npp':>4} {'s/case':>8} {'forward s':>10} {'tiles':>6} {'passes':>7} {'total/forward':>14}")
    for tta in (True, False):
        for npp in (0, 1):
            r = time_prediction(model_dir, images, work / f"pred_{tta}_{npp}", args.device, tta, npp)
            print(f"{'on' if tta else 'off':>5} {npp:>4} {r['total'] / r['cases']:8.3f} {r['forward']:10.2f} "
                  f"{r['tiles']:6d} {r['passes']:7d} {r['total'] / r['forward']:14.3f}")
    check_geometry_round_trips(model_dir, images, work, args.device)


def big_child(args) -> None:
    """Runs in a child process: build a tiny model, write a 512x512x300 volume, predict it, report peak RSS."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_predict_helpers import save_tiny_model, tiny_plans

    from smitunet.imageio import Geometry, write_image
    from smitunet.inference.predictor import PredictionOptions, Predictor
    from smitunet.networks.registry import resolve_kwargs
    from smitunet.plans import NetworkConfig

    work = Path(args.work_dir)
    set_folders(work)
    plans = tiny_plans(num_classes=3, spacing=(1.0, 1.0, 1.0), patch=[64, 128, 128], dataset_name="Dataset991_Big")
    # the pipeline's memory is what is measured: a minimal conv network keeps the 2-core run short
    kwargs = resolve_kwargs("conv_unet", 1, 3, [64, 128, 128], base_features=4, max_features=16, num_stages=2,
                            n_conv_per_stage=1)
    plans.configurations["3d_fullres"] = dataclasses.replace(plans.configurations["3d_fullres"],
                                                             network=NetworkConfig("conv_unet", kwargs))
    model_dir = save_tiny_model(work / "results", plans)
    spacing_xyz = (1.0, 1.0, 1.0) if not args.resample else (0.8, 0.8, 1.5)
    geo = Geometry(spacing_xyz, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (512, 512, 300))
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 100, (300, 512, 512)).astype(np.float32)
    inp = work / "big_in"
    write_image(volume, geo, inp / "big_0000.nii")  # uncompressed: writing 300 MB of noise through gzip is slow
    del volume
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    options = PredictionOptions(use_tta=False, device="cpu", num_processes=0, step_size=args.big_step, progress=False)
    start = time.perf_counter()
    Predictor.from_model_folder(model_dir, ["0"], options=options).predict_folder(inp, work / "big_out")
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"PEAK_RSS_MB {peak / 1024:.0f} (before prediction {base_rss / 1024:.0f}) seconds {took:.1f} "
          f"tiles {options.stats['tiles']}")


def part_big(args, work: Path) -> None:
    print("\n512x512x300 volume, 3 classes, CPU, no TTA, step", args.big_step, "(minimal conv_unet, patch 64x128x128)")
    print(f"{'case':>34} {'peak RSS MB':>12} {'seconds':>8}")
    for resample in (False, True):
        child_work = Path(tempfile.mkdtemp(dir=work))
        cmd = [sys.executable, __file__, "--big_child", "--work_dir", str(child_work), "--big_step", str(args.big_step)]
        if resample:
            cmd.append("--resample")
        result = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in result.stdout.splitlines() if x.startswith("PEAK_RSS_MB")), None)
        if line is None:
            print(result.stdout[-2000:], result.stderr[-2000:])
            continue
        parts = line.split()
        label = "resampled back (0.8x0.8x1.5 mm in)" if resample else "same spacing (1 mm, argmax path)"
        print(f"{label:>34} {parts[1]:>12} {parts[6]:>8}   (RSS after writing the input: {parts[4].rstrip(')')} MB)")
        shutil.rmtree(child_work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_train", type=int, default=12)
    p.add_argument("--num_test", type=int, default=10)
    p.add_argument("--train_iterations", type=int, default=10)
    p.add_argument("--skip_big", action="store_true")
    p.add_argument("--skip_hippocampus", action="store_true")
    p.add_argument("--big_step", type=float, default=1.0, help="tile step for the big volume (fewer tiles)")
    p.add_argument("--big_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resample", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.big_child:
        return big_child(args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="smitunet_bench_"))
    set_folders(work)
    if not args.skip_hippocampus:
        if not HIPPOCAMPUS.is_dir():
            print(f"skipping the Hippocampus part: {HIPPOCAMPUS} not found")
        else:
            part_hippocampus(args, work)
    if not args.skip_big:
        part_big(args, work)


if __name__ == "__main__":
    main()

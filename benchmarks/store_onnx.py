#!/usr/bin/env python
"""The compressed store and the ONNX Runtime backend on Hippocampus, in one short run (about 5-10 min on 2 cores).

    python benchmarks/store_onnx.py [--cases 40] [--epochs 3] [--iters 10] [--predict_cases 5]

1. Disk: a subset of ../shared/data/Task04_Hippocampus is planned and preprocessed (the blosc2 store); the same
   arrays are written as the previous store wrote them (.npy, uncompressed locations) and both folders are summed.
2. Data wait: fold 0 trains the same seeded iterations from each store twice (ABBA order; same batches, same
   network), and the training loop's own data-wait fraction per epoch is reported (the first epoch includes
   starting the workers).
3. Prediction: the trained fold is exported to ONNX and cases outside the subset are predicted with mirroring TTA
   by eager PyTorch and by ONNX Runtime, alternating, each three times (median s/case); label maps are compared
   voxel by voxel and the logits of both backends on the preprocessed cases are compared directly.

Everything runs with one thread per library (OMP_NUM_THREADS=1, set below), as on the shared 2-core machine.
Results: benchmarks/results/store_onnx_{timestamp}.md / .json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch/onnxruntime start their thread pools

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_description, machine_markdown, markdown_table, now_utc, write_results  # noqa: E402

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH.parent.parent / "shared" / "data" / "Task04_Hippocampus"
WORK = BENCH / "work" / "store_onnx"
DATASET = "Dataset004_Hippocampus"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def use(kind: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[f"smitunet_{kind}"] = str(folder)


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def make_subset(n: int, work: Path = WORK) -> tuple[list[dict], list[dict]]:
    """The first ``n`` training cases of Task04_Hippocampus as an MSD folder under ``work``; returns them and the
    rest."""
    msd = json.loads((SOURCE / "dataset.json").read_text())
    task = work / "Task04_Hippocampus"
    shutil.rmtree(task, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    subset, rest = msd["training"][:n], msd["training"][n:]
    for entry in subset:
        for key in ("image", "label"):
            (task / entry[key]).symlink_to((SOURCE / entry[key]).resolve())
    (task / "dataset.json").write_text(json.dumps({**msd, "training": subset, "numTraining": n, "test": []}))
    return subset, rest


def legacy_copy(b2nd_root: Path, npy_root: Path, data_identifier: str) -> None:
    """The same store as the previous smitunet wrote it: .npy arrays, uncompressed class locations."""
    from smitunet.preprocessing.case_arrays import load_case_array

    shutil.rmtree(npy_root / DATASET, ignore_errors=True)
    shutil.copytree(b2nd_root / DATASET, npy_root / DATASET,
                    ignore=lambda d, names: [n for n in names if n.endswith((".b2nd", "_locations.npz"))])
    src, dst = b2nd_root / DATASET / data_identifier, npy_root / DATASET / data_identifier
    for path in sorted(src.glob("*.b2nd")):
        np.save(dst / (path.name[: -len(".b2nd")] + ".npy"), load_case_array(path))
    for path in sorted(src.glob("*_locations.npz")):
        with np.load(path) as z:
            np.savez(dst / path.name, **{k: z[k] for k in z.files})


def train(store_root: Path, results: Path, epochs: int, iters: int, precision: str = "auto") -> dict:
    from smitunet.training.build import build_trainer

    use("preprocessed", store_root)
    use("results", results)
    shutil.rmtree(results / DATASET, ignore_errors=True)
    start = time.perf_counter()
    trainer = build_trainer(4, "3d_fullres", 0, epochs=epochs, iters_per_epoch=iters, device="cpu", seed=0,
                            precision=precision)
    trainer.run()
    wall = time.perf_counter() - start
    fold = next((results / DATASET).glob("*/fold_0"))
    with open(fold / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    waits = [float(r["data_wait_fraction"]) for r in rows]
    losses = [float(r["train_loss"]) for r in rows]
    return {"wall_s": wall, "data_wait_per_epoch": waits, "train_loss_per_epoch": losses,
            "data_wait_after_first_epoch": statistics.mean(waits[1:]) if len(waits) > 1 else waits[0],
            "model_dir": str(fold.parent), "workers": trainer.options.num_workers}


def predict_runs(inputs: Path, exported: Path, repeats: int) -> dict:
    from smitunet import api
    from smitunet.inference.predictor import PredictionOptions

    seconds: dict[str, dict[str, list[float]]] = {"eager": {}, "onnxruntime": {}}
    for r in range(repeats):
        for backend in ("eager", "onnxruntime") if r % 2 == 0 else ("onnxruntime", "eager"):
            options = PredictionOptions(device="cpu", num_processes=0, progress=False)
            out = WORK / f"pred_{backend}"
            shutil.rmtree(out, ignore_errors=True)
            if backend == "eager":
                api.predict(inputs, out, dataset=4, options=options)
            else:
                api.predict(inputs, out, model_folders=[exported], options=options)
            for case, s in options.stats["case_seconds"].items():
                seconds[backend].setdefault(case, []).append(s)
            log(f"predict {backend} run {r + 1}: {sum(options.stats['case_seconds'].values()):.1f} s")
    return seconds


def compare_outputs(inputs: Path, exported: Path, model_dir: Path) -> dict:
    """Label maps of both runs voxel by voxel; logits of both backends on each preprocessed case."""
    import torch

    from smitunet.imageio import read_image
    from smitunet.inference.onnx_backend import ExportedModel, sliding_window_numpy
    from smitunet.inference.predictor import Predictor, PredictionOptions
    from smitunet.inference.inputs import find_input_cases
    from smitunet.inference.sliding_window import predict_sliding_window

    predictor = Predictor.from_model_folder(model_dir, ["0"], options=PredictionOptions(device="cpu"))
    eager = predictor.model
    eager.network.load_state_dict(eager.state_dicts[0])
    ort_model = ExportedModel(exported, device="cpu")
    rows = []
    for case in find_input_cases(inputs, 1):
        a = read_image(WORK / "pred_eager" / f"{case.name}.nii.gz")[0]
        b = read_image(WORK / "pred_onnxruntime" / f"{case.name}.nii.gz")[0]
        data, _ = predictor.preprocess(case)
        axes = eager.mirror_axes
        la = predict_sliding_window(eager.network, torch.from_numpy(data), eager.config_plan.patch_size,
                                    eager.num_classes, 0.5, axes, 1, "cpu", progress=False).numpy()
        lb = sliding_window_numpy(ort_model.runners[0], data, ort_model.patch_size, ort_model.num_classes, 0.5, axes,
                                  progress=False)
        rows.append({"case": case.name, "voxels": int(a.size), "label_voxels_differing": int((a != b).sum()),
                     "max_abs_logit_difference": float(np.abs(la - lb).max()),
                     "foreground_voxels": int((a > 0).sum())})
    return {"cases": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=40, help="training cases of the subset")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="iterations per epoch")
    p.add_argument("--predict_cases", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="prediction runs per backend (alternating)")
    args = p.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"error: {SOURCE} not found")
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    from smitunet import api
    from smitunet.plans import Plans

    subset, rest = make_subset(args.cases)
    use("raw", WORK / "raw")
    b2nd_root, npy_root = WORK / "preprocessed", WORK / "preprocessed_npy"
    use("preprocessed", b2nd_root)
    use("results", WORK / "results")
    shutil.rmtree(WORK / "raw" / DATASET, ignore_errors=True)
    shutil.rmtree(b2nd_root / DATASET, ignore_errors=True)
    from smitunet.dataset.msd import convert_msd

    convert_msd(WORK / "Task04_Hippocampus", 4, output_raw=WORK / "raw")
    t0 = time.perf_counter()
    api.plan_and_preprocess([4], num_processes=2)
    preprocess_s = time.perf_counter() - t0
    plans = Plans.load(b2nd_root / DATASET / "smitunetPlans.json")
    config = plans.configuration("3d_fullres")
    legacy_copy(b2nd_root, npy_root, config.data_identifier)
    folder_b2nd, folder_npy = b2nd_root / DATASET / config.data_identifier, npy_root / DATASET / config.data_identifier
    disk = {"b2nd_store_bytes": folder_bytes(folder_b2nd), "npy_store_bytes": folder_bytes(folder_npy),
            "b2nd_arrays_bytes": folder_bytes(folder_b2nd, "*.b2nd"),
            "npy_arrays_bytes": folder_bytes(folder_npy, "*.npy")}
    disk["store_ratio"] = disk["b2nd_store_bytes"] / disk["npy_store_bytes"]
    disk["arrays_ratio"] = disk["b2nd_arrays_bytes"] / disk["npy_arrays_bytes"]
    log(f"disk: store {disk['store_ratio']:.3f}x, arrays {disk['arrays_ratio']:.3f}x of .npy")

    # ABBA order: the machine's load drifts, so each store runs once early and once late.
    runs: dict[str, list[dict]] = {"b2nd": [], "npy": []}
    for i, name in enumerate(("b2nd", "npy", "npy", "b2nd")):
        root = b2nd_root if name == "b2nd" else npy_root
        run = train(root, WORK / f"results_{name}_{i}", args.epochs, args.iters)
        runs[name].append(run)
        log(f"train from {name}: data wait {run['data_wait_per_epoch']}, {run['wall_s']:.0f} s")
    training = {name: {"runs": r, "workers": r[0]["workers"], "model_dir": r[0]["model_dir"],
                       "train_loss_per_epoch": r[0]["train_loss_per_epoch"],
                       "data_wait_after_first_epoch": statistics.mean(x["data_wait_after_first_epoch"] for x in r),
                       "data_wait_max": max(max(x["data_wait_per_epoch"]) for x in r),
                       "wall_s": statistics.mean(x["wall_s"] for x in r)} for name, r in runs.items()}

    use("preprocessed", b2nd_root)
    use("results", Path(training["b2nd"]["model_dir"]).parent.parent)
    exported = WORK / "exported"
    shutil.rmtree(exported, ignore_errors=True)
    api.export(4, "3d_fullres", ["0"], exported, format="onnx")
    inputs = WORK / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    for entry in rest[: args.predict_cases]:
        name = Path(entry["image"]).name[: -len(".nii.gz")]
        (inputs / f"{name}_0000.nii.gz").symlink_to((SOURCE / entry["image"]).resolve())
    seconds = predict_runs(inputs, exported, args.repeats)
    comparison = compare_outputs(inputs, exported, Path(training["b2nd"]["model_dir"]))
    median = {b: statistics.median(statistics.median(v) for v in per_case.values()) for b, per_case in
              seconds.items()}
    import onnxruntime
    import blosc2
    import torch

    data = {"date": now_utc(), "machine": machine_description(), "args": vars(args),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "blosc2": blosc2.__version__},
            "plans": {"patch_size": config.patch_size, "batch_size": config.batch_size,
                      "network": config.network.name, "spacing": config.spacing},
            "preprocess_s": preprocess_s, "disk": disk, "training": training,
            "predict_seconds_per_case": seconds, "predict_median_s_per_case": median,
            "ort_over_eager": median["onnxruntime"] / median["eager"], "comparison": comparison,
            "total_s": time.perf_counter() - started}
    md = [f"# Compressed store and ONNX Runtime backend, Hippocampus subset ({now_utc()})", "",
          machine_markdown(data["machine"], {"libraries": data["versions"]}), "",
          f"Subset: the first {args.cases} training cases of Task04_Hippocampus; plan {config.network.name}, patch "
          f"{config.patch_size}, batch {config.batch_size}; everything single-threaded (OMP_NUM_THREADS=1).", "",
          "## Disk", "",
          markdown_table(["store", "arrays (MB)", "whole folder (MB)"], [
              ["previous (.npy, uncompressed locations)", f"{disk['npy_arrays_bytes'] / 1e6:.2f}",
               f"{disk['npy_store_bytes'] / 1e6:.2f}"],
              ["blosc2 (.b2nd, compressed locations)", f"{disk['b2nd_arrays_bytes'] / 1e6:.2f}",
               f"{disk['b2nd_store_bytes'] / 1e6:.2f}"],
              ["ratio", f"{disk['arrays_ratio']:.3f}x", f"{disk['store_ratio']:.3f}x"]]), "",
          "## Data wait while training (fraction of training time the step waited for a batch)", "",
          f"Fold 0, {args.epochs} epochs of {args.iters} iterations, the same seed (same batches) from each store, "
          f"in the order blosc2, .npy, .npy, blosc2; {training['b2nd']['workers']} loader worker(s).", "",
          markdown_table(["store", "run", "data wait per epoch", "mean after epoch 1", "wall (s)"], [
              [name, i + 1, ", ".join(f"{100 * w:.1f} %" for w in r["data_wait_per_epoch"]),
               f"{100 * r['data_wait_after_first_epoch']:.1f} %", f"{r['wall_s']:.0f}"]
              for name, t in training.items() for i, r in enumerate(t["runs"])]), "",
          f"Training loss per epoch, blosc2 {[round(x, 4) for x in training['b2nd']['train_loss_per_epoch']]}, "
          f".npy {[round(x, 4) for x in training['npy']['train_loss_per_epoch']]}.", "",
          "## Prediction: eager PyTorch vs ONNX Runtime (CPU, mirroring TTA, 1 fold)", "",
          markdown_table(["backend", "median s/case", "runs"], [
              [b, f"{median[b]:.3f}", args.repeats] for b in ("eager", "onnxruntime")]), "",
          f"ONNX Runtime / eager: **{data['ort_over_eager']:.2f}x**.", "",
          markdown_table(["case", "voxels", "foreground voxels", "label voxels differing", "max |logit difference|"],
                         [[r["case"], r["voxels"], r["foreground_voxels"], r["label_voxels_differing"],
                           f"{r['max_abs_logit_difference']:.2e}"] for r in comparison["cases"]]), "",
          f"Total run time {data['total_s'] / 60:.1f} min."]
    md_path, json_path = write_results("store_onnx", "\n".join(md), data)
    log(f"written {md_path} and {json_path}")


if __name__ == "__main__":
    main()

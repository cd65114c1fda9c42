"""The CPU fast paths of ``smitunet.networks.blocks`` against the plain torch layers, in the same run.

    python benchmarks/cpu_layers.py [--threads 1] [--steps 12] [--tiles 12] [--tasks hippocampus left_atrium]
                                    [--pretrain_steps N] [--predict_cases N [--train_bf16]]

Twin networks with the same weights: one as built (instance norm through the group-norm kernel), one after
``plain_layers`` (torch's own kernels). Their steps alternate, so a load that changes during the run hits both
alike. Geometries are the planned ``3d_fullres`` networks:
Hippocampus (smit_small, 2 Swin stages, patch 40x56x40, batch 5, 3 classes) and Left Atrium at 1.25 mm
(smit_small, 3 stages, patch 48x48x64, batch 2, 2 classes).

- training: forward with deep supervision, Dice+CE, backward, AdamW; median seconds per step after one warm-up,
  and the largest loss difference from the plain fp32 twin over all steps (they start equal and drift by
  rounding), for the fast layers in fp32 and, where oneDNN has bf16, under bf16 autocast
  (``smitunet_train --precision bf16``);
- inference: one tile under ``no_grad`` (the CPU sliding window's batch of 1), fp32 fast vs plain, and, where
  oneDNN has bf16, bf16 autocast (``--precision bf16``) vs plain fp32: time ratio, largest logit difference and
  the share of voxels whose argmax changes.

``--pretrain_steps N`` adds ``smitunet_pretrain --precision bf16`` against fp32 (``--pretrain_method``, default gmim)
at each task's geometry: two runs from the same weights on the same views and masks, median s/step and the largest
difference of the total loss.

``--predict_cases N`` adds the end-to-end check on real data: a smit_small fold 0 trained briefly on the first
``--train_cases`` Hippocampus cases (``--epochs`` x ``--iters``), then ``N`` other cases predicted with mirroring TTA
by the plain layers in fp32, the fast paths in fp32 and (where supported) the fast paths under bf16 autocast, in
alternating order over two rounds: median s/case, mean foreground Dice against the labels, and voxels whose label
differs from the plain run's. ``--train_bf16`` also trains that model with ``--precision bf16`` (same seed, so the
same batches): wall time of both trainings, the largest difference of their per-epoch mean losses, and the
bf16-trained model's predictions (fast layers, fp32) scored the same way.

Results: ``benchmarks/results/cpu_layers_*.{md,json}``.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import RESULTS_DIR, machine_description, now_utc  # noqa: E402
from smitunet.networks.blocks import plain_layers  # noqa: E402
from smitunet.networks.registry import create_network  # noqa: E402
from smitunet.training.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402

WORK = Path(__file__).resolve().parent / "work" / "cpu_layers"
TASKS = {
    "hippocampus": dict(patch=[40, 56, 40], batch=5, classes=3, num_stages=2, strides=[[2, 2, 2]] * 3),
    "left_atrium": dict(patch=[48, 48, 64], batch=2, classes=2, num_stages=3,
                        strides=[[2, 2, 2]] * 3 + [[1, 1, 2]]),
}


def twins(task: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    fast = create_network("smit_small", 1, task["classes"], task["patch"], num_stages=task["num_stages"],
                          strides=task["strides"], deep_supervision=True)
    return fast, plain_layers(copy.deepcopy(fast))


def training(task: dict, steps: int) -> dict:
    """Steps of the fast layers (fp32, and under bf16 autocast where oneDNN has bf16) against the plain layers in
    fp32, on one fixed random batch; every variant starts from the same weights."""
    fast, plain = twins(task)
    nets = {"plain": (plain, False), "fast": (fast, False)}
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if bf16:  # --precision bf16 of smitunet_train: the trainer's step under autocast, float32 weights
        nets["fast_bf16"] = (copy.deepcopy(fast), True)
    loss_fn = DeepSupervisionLoss(DiceCELoss())
    opts = {k: torch.optim.AdamW(n.parameters(), lr=1e-3, weight_decay=1e-2) for k, (n, _) in nets.items()}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(task["batch"], 1, *task["patch"], generator=gen)
    y = torch.randint(0, task["classes"], (task["batch"], 1, *task["patch"]), generator=gen)
    times = {k: [] for k in nets}
    losses = {k: [] for k in nets}
    for _ in range(steps + 1):
        for name, (net, autocast) in nets.items():
            net.train()
            start = time.perf_counter()
            opts[name].zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(net(x), y)
            loss.backward()
            opts[name].step()
            times[name].append(time.perf_counter() - start)
            losses[name].append(float(loss.detach()))
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    result = {"plain_s": med["plain"], "losses_plain": losses["plain"], "bf16_supported": bf16}
    for name in [k for k in nets if k != "plain"]:
        result[name] = {"s": med[name], "ratio": med[name] / med["plain"], "losses": losses[name],
                        "max_loss_diff": max(abs(a - b) for a, b in zip(losses[name], losses["plain"]))}
    return result


def inference(task: dict, tiles: int) -> dict:
    fast, plain = twins(task)
    for net in (fast, plain):
        net.eval()
        net.deep_supervision = False
    x = torch.randn(1, 1, *task["patch"], generator=torch.Generator().manual_seed(2))
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    runs = {"plain": lambda: plain(x), "fast": lambda: fast(x)}
    if bf16:
        def fast_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fast(x).float()
        runs["fast_bf16"] = fast_bf16
    times = {k: [] for k in runs}
    outs = {}
    with torch.no_grad():
        for _ in range(tiles + 1):
            for name, run in runs.items():
                start = time.perf_counter()
                outs[name] = run()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    ref = outs["plain"]
    result = {"plain_s": med["plain"]}
    for name in [k for k in runs if k != "plain"]:
        result[name] = {"s": med[name], "ratio": med[name] / med["plain"],
                        "max_logit_diff": float((outs[name] - ref).abs().max()),
                        "argmax_changed": float((outs[name].argmax(1) != ref.argmax(1)).float().mean())}
    result["bf16_supported"] = bf16
    return result


def pretraining(task: dict, steps: int, method: str) -> dict:
    """``smitunet_pretrain --precision bf16`` against fp32: two runs from the same weights on the same stream of
    views and masks (random volumes at the task's patch), steps alternating; median s/step after one warm-up and
    the largest difference of the total loss."""
    import numpy as np

    from smitunet.pretraining.config import PretrainSettings
    from smitunet.pretraining.trainer import PretrainingRun, RunOptions

    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, *[p + 8 for p in task["patch"]])).astype(np.float32) for _ in range(4)]
    runs, streams = {}, {}
    for precision in ("fp32", "bf16"):
        options = RunOptions(output=WORK / "unused.pt", preset="smit_small", patch=list(task["patch"]),
                             network_overrides={"num_stages": task["num_stages"], "strides": task["strides"]},
                             epochs=1, iters_per_epoch=steps + 1, batch_size=2, num_workers=0, precision=precision)
        torch.manual_seed(0)
        runs[precision] = PretrainingRun(options, PretrainSettings(method=method), volumes, 1)
        streams[precision] = runs[precision].batch_stream()
    times = {k: [] for k in runs}
    losses = {k: [] for k in runs}
    for step in range(steps + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            terms = run.train_step(step, next(streams[name]))
            times[name].append(time.perf_counter() - start)
            losses[name].append(terms["loss"])
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"method": method, "fp32_s": med["fp32"], "bf16_s": med["bf16"], "ratio": med["bf16"] / med["fp32"],
            "losses": losses, "max_loss_diff": max(abs(a - b) for a, b in zip(losses["bf16"], losses["fp32"]))}


def hippocampus_models(train_cases: int, epochs: int, iters: int, predict_cases: int,
                       precisions: list[str]) -> tuple[dict, Path, Path]:
    """Fold 0 trained on the first ``train_cases`` cases once per training precision (same seed, so the same
    batches); returns {precision: train record with ``model_dir``}, a folder with the images of ``predict_cases``
    other cases and one with their labels."""
    import store_onnx
    from smitunet import api
    from smitunet.dataset.msd import convert_msd

    shutil.rmtree(WORK, ignore_errors=True)
    subset, rest = store_onnx.make_subset(train_cases, WORK)
    store_onnx.use("raw", WORK / "raw")
    store_onnx.use("preprocessed", WORK / "preprocessed")
    convert_msd(WORK / "Task04_Hippocampus", 4, output_raw=WORK / "raw")
    api.plan_and_preprocess([4], num_processes=2)
    trained = {}
    for precision in precisions:
        trained[precision] = store_onnx.train(WORK / "preprocessed", WORK / f"results_{precision}", epochs, iters,
                                              precision=precision)
        print(f"  trained ({precision}): {trained[precision]['wall_s']:.0f} s", flush=True)
    images, labels = WORK / "inputs", WORK / "labels"
    for folder in (images, labels):
        folder.mkdir()
    for entry in rest[:predict_cases]:
        name = Path(entry["image"]).name
        (images / name.replace(".nii.gz", "_0000.nii.gz")).symlink_to((store_onnx.SOURCE / entry["image"]).resolve())
        (labels / name).symlink_to((store_onnx.SOURCE / entry["label"]).resolve())
    return trained, images, labels


def prediction(model_dirs: dict[str, Path], images: Path, labels: Path) -> dict:
    """The fp32-trained model in three ways, and each other training precision's model with the fast layers."""
    from smitunet.inference.predictor import Predictor, PredictionOptions

    variants = {"plain_fp32": ("fp32", True, "fp32"), "fast_fp32": ("fp32", False, "fp32")}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        variants["fast_bf16"] = ("fp32", False, "bf16")
    for trained in model_dirs:
        if trained != "fp32":
            variants[f"{trained}_trained_fast_fp32"] = (trained, False, "fp32")
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for order in (list(variants), list(reversed(variants))):  # two rounds, opposite orders
        for name in order:
            trained, plain, precision = variants[name]
            options = PredictionOptions(device="cpu", precision=precision, num_processes=0, progress=False)
            predictor = Predictor.from_model_folder(model_dirs[trained], ["0"], options=options)
            if plain:
                plain_layers(predictor.model.network)
            out = WORK / f"pred_{name}"
            shutil.rmtree(out, ignore_errors=True)
            predictor.predict_folder(images, out)
            seconds[name] += list(options.stats["case_seconds"].values())
            print(f"  predicted {name}: {sum(options.stats['case_seconds'].values()):.1f} s", flush=True)
    return score(labels, seconds)


def score(labels: Path, seconds: dict[str, list[float]]) -> dict:
    """Median s/case, mean foreground Dice, and label voxels differing from the plain fp32 run, per variant."""
    from smitunet import api
    from smitunet.imageio import read_image

    result = {}
    for name in seconds:
        summary = api.evaluate(labels, WORK / f"pred_{name}", output_file=WORK / f"summary_{name}.json")
        differing = sum(int((read_image(f)[0] != read_image(WORK / "pred_plain_fp32" / f.name)[0]).sum())
                        for f in sorted((WORK / f"pred_{name}").glob("*.nii.gz")))
        result[name] = {"s_per_case": statistics.median(seconds[name]), "dice": summary["foreground_mean"]["dice"],
                        "label_voxels_differing_from_plain": differing}
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=12, help="training steps per twin after one warm-up")
    p.add_argument("--tiles", type=int, default=12, help="inference tiles per variant after one warm-up")
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    p.add_argument("--predict_cases", type=int, default=0, help="Hippocampus cases predicted end to end (0: skip)")
    p.add_argument("--train_cases", type=int, default=40)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--pretrain_steps", type=int, default=0,
                   help="pretraining steps per precision after one warm-up, fp32 vs bf16 (0: skip; needs oneDNN bf16)")
    p.add_argument("--pretrain_method", choices=("smit", "smart", "gmim"), default="gmim")
    p.add_argument("--train_bf16", action="store_true",
                   help="also train the prediction model with --precision bf16 (same seed): loss curves, s/iteration "
                        "and its predictions' Dice against the fp32-trained model")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"date": now_utc(), "machine": machine_description(), "torch": torch.__version__,
               "threads": args.threads, "steps": args.steps, "tiles": args.tiles, "tasks": {}}
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        train = training(task, args.steps)
        infer = inference(task, args.tiles)
        results["tasks"][name] = {"geometry": task, "training": train, "inference": infer}
        first = len(rows)
        for variant, label in (("fast", "fp32"), ("fast_bf16", "bf16 autocast")):
            if variant in train:
                v = train[variant]
                rows.append(f"| {name}: training step (batch {task['batch']}), {label} | {train['plain_s']:.2f} s | "
                            f"{v['s']:.2f} s | **{v['ratio']:.2f}** | loss diff ≤ {v['max_loss_diff']:.1e} over "
                            f"{args.steps + 1} steps |")
            if variant in infer:
                v = infer[variant]
                rows.append(f"| {name}: inference tile, {label} | {infer['plain_s']:.3f} s | {v['s']:.3f} s | "
                            f"**{v['ratio']:.2f}** | logit diff ≤ {v['max_logit_diff']:.1e}, argmax changed "
                            f"{100 * v['argmax_changed']:.2f} % |")
        if args.pretrain_steps and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            pre = results["tasks"][name]["pretraining"] = pretraining(task, args.pretrain_steps, args.pretrain_method)
            rows.append(f"| {name}: pretraining step ({pre['method']}, batch 2), bf16 autocast | {pre['fp32_s']:.2f} s "
                        f"| {pre['bf16_s']:.2f} s | **{pre['ratio']:.2f}** | loss diff ≤ {pre['max_loss_diff']:.1e} "
                        f"over {args.pretrain_steps + 1} steps |")
        print("\n".join(rows[first:]), flush=True)
    if args.predict_cases:
        precisions = ["fp32", "bf16"] if args.train_bf16 else ["fp32"]
        trained, images, labels = hippocampus_models(args.train_cases, args.epochs, args.iters, args.predict_cases,
                                                     precisions)
        results["trained"] = trained
        for precision in precisions[1:]:
            t, ref = trained[precision], trained["fp32"]
            diff = max(abs(a - b) for a, b in zip(t["train_loss_per_epoch"], ref["train_loss_per_epoch"]))
            rows.append(f"| Hippocampus fold 0 trained {args.epochs}x{args.iters} iterations (data workers included): "
                        f"{precision} | {ref['wall_s']:.0f} s | {t['wall_s']:.0f} s | "
                        f"**{t['wall_s'] / ref['wall_s']:.2f}** | epoch mean loss diff ≤ {diff:.1e} |")
        predicted = results["prediction"] = prediction({k: Path(v["model_dir"]) for k, v in trained.items()},
                                                       images, labels)
        base = predicted["plain_fp32"]
        for name, v in predicted.items():
            rows.append(f"| Hippocampus, {args.predict_cases} cases predicted with TTA: {name} | "
                        f"{base['s_per_case']:.2f} s/case | {v['s_per_case']:.2f} s/case | "
                        f"**{v['s_per_case'] / base['s_per_case']:.2f}** | Dice {v['dice']:.4f} "
                        f"(Δ {v['dice'] - base['dice']:+.4f}), {v['label_voxels_differing_from_plain']} label voxels "
                        f"differ |")
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    md = [f"# CPU fast paths vs plain torch layers ({results['date']})", "",
          f"{results['machine']}; torch {torch.__version__}; {args.threads} thread(s); medians of {args.steps} "
          f"training steps and {args.tiles} tiles after one warm-up, twins alternating; random-init weights "
          f"(`python benchmarks/cpu_layers.py {' '.join(sys.argv[1:])}`)."
          + (f" Prediction model: fold 0 trained {args.epochs}x{args.iters} iterations on the first "
             f"{args.train_cases} Hippocampus cases." if args.predict_cases else ""), "",
          "| measure | plain | fast path | ratio | agreement |", "|---|---|---|---|---|", *rows, ""]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"cpu_layers_{stamp}.md").write_text("\n".join(md))
    (RESULTS_DIR / f"cpu_layers_{stamp}.json").write_text(json.dumps(results, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Fault scenarios of issue 15, run through the real CLIs: bad inputs, unreadable files, unwritable or full
destinations. Prints (and writes under benchmarks/results/) a table scenario | expected | observed | pass.

    python benchmarks/faults.py            # 1.5 min on the loaded 2-core machine (23 CLI runs); needs no data

The model is an untrained smit_tiny written directly (what it predicts does not matter here, only what the commands
do with bad input); a small synthetic dataset is planned and preprocessed for the training scenarios.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, machine_markdown, markdown_table, now_utc, write_results  # noqa: E402

from smitunet.checkpoint_io import TrainingCheckpoint  # noqa: E402
from smitunet.dataset.synthetic import generate_synthetic_dataset  # noqa: E402
from smitunet.imageio import Geometry, write_image  # noqa: E402
from smitunet.networks import create_network  # noqa: E402
from smitunet.networks.registry import resolve_kwargs  # noqa: E402
from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans  # noqa: E402

EYE = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
GEO = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), EYE, (24, 20, 16))
STRIDES = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]


def tiny_model(results: Path) -> Path:
    kwargs = resolve_kwargs("smit_tiny", 1, 2, [16, 16, 16], strides=STRIDES)
    cfg = ConfigurationPlan(data_identifier="smitunetPlans_3d_fullres", spacing=[1.0, 1.0, 1.0],
                            patch_size=[16, 16, 16], batch_size=2, median_image_shape=[24, 20, 16],
                            normalization=["ZScore"], use_mask_for_norm=[False],
                            network=NetworkConfig("smit_tiny", kwargs))
    plans = Plans(dataset_name="Dataset990_Faults", plans_name="smitunetPlans", channel_names={"0": "MRI"},
                  labels={"background": 0, "a": 1}, file_ending=".nii.gz", original_median_spacing=[1.0, 1.0, 1.0],
                  original_median_shape=[24, 20, 16], foreground_intensity_properties={},
                  configurations={"3d_fullres": cfg})
    torch.manual_seed(0)
    net = create_network("smit_tiny", **kwargs)
    folder = results / plans.dataset_name / "SMITTrainer__smitunetPlans__3d_fullres"
    TrainingCheckpoint(network={"name": "smit_tiny", "kwargs": kwargs}, state_dict=net.state_dict(),
                       plans=plans.to_dict(), configuration="3d_fullres", epoch=1,
                       trainer_name="SMITTrainer").save(folder / "fold_0" / "checkpoint_final.pt")
    return folder


def image(seed: int, shape=GEO.shape_zyx) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)


def inputs(folder: Path, bad: str | None) -> Path:
    write_image(image(0), GEO, folder / "good_0000.nii.gz")
    if bad == "truncated":
        write_image(image(1), GEO, folder / "bad_0000.nii.gz")
        (folder / "bad_0000.nii.gz").write_bytes((folder / "bad_0000.nii.gz").read_bytes()[:500])
    elif bad == "nan":
        arr = image(1)
        arr[3, 4, 5] = np.nan
        write_image(arr, GEO, folder / "bad_0000.nrrd")   # NIfTI readers turn NaN into 0 by themselves
    elif bad == "single_slice":
        write_image(np.ones((1, 40, 40), np.float32), Geometry((1.0,) * 3, (0.0,) * 3, EYE, (40, 40, 1)),
                    folder / "bad_0000.nii.gz")
    return folder


def run(module: str, args: list[str], env: dict, fsize: int | None = None, umask: int | None = None):
    def child():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          preexec_fn=child, timeout=600)


def one_line(proc, needle: str = "") -> tuple[bool, str]:
    """A non-zero exit, no traceback, exactly one ``error:`` line (holding ``needle``); and what is shown of it."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    ok = proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1 and needle in errors[0]
    shown = errors[0] if errors else (proc.stderr.strip().splitlines() or ["(nothing)"])[-1]
    return ok, f"exit {proc.returncode}: {shown[:150]}"


def scenarios(work: Path, env: dict) -> list[list]:
    rows = []
    predict = "smitunet.inference.cli"
    base = ["--disable_tta", "--device", "cpu"]

    for bad in ("truncated", "nan", "single_slice"):
        out = work / f"out_{bad}"
        proc = run(predict, ["-i", str(inputs(work / f"in_{bad}", bad)), "-o", str(out), *base], env)
        skipped = [line for line in proc.stderr.splitlines() if "skipped: case bad" in line]
        ok = (proc.returncode == 2 and "Traceback" not in proc.stderr and len(skipped) == 1
              and (out / "good.nii.gz").is_file() and not list(out.glob("bad.*")))
        rows.append([f"predict: {bad} input among good", "bad case: one line, no output; good predicted; exit 2",
                     f"exit {proc.returncode}; {skipped[0][:90] if skipped else 'no skip line'}", ok])

    out = work / "out_strict"
    proc = run(predict, ["-i", str(work / "in_truncated"), "-o", str(out), "--strict", *base], env)
    ok, seen = one_line(proc)
    rows.append(["predict --strict: truncated input", "one line, nothing written", seen,
                 ok and not (out.exists() and any(out.iterdir()))])

    proc = run(predict, ["-i", str(work / "in_nan"), "-o", "/proc/nope", *base], env)
    rows.append(["predict -o /proc/nope", "one line naming the folder", *_named(proc, "/proc/nope")])

    out = work / "out_mode"
    proc = run(predict, ["-i", str(inputs(work / "in_mode", None)), "-o", str(out), "--save_probabilities", *base],
               env, umask=0o022)
    modes = sorted({oct(p.stat().st_mode & 0o777) for p in out.iterdir()}) if out.is_dir() else []
    rows.append(["output file modes, umask 022", "0o644", ", ".join(modes) or f"exit {proc.returncode}",
                 proc.returncode == 0 and modes == ["0o644"]])

    out = work / "out_full"
    out.mkdir()
    (out / "good.npz").write_bytes(b"previous")
    proc = run(predict, ["-i", str(work / "in_mode"), "-o", str(out), "--save_probabilities", *base], env,
               fsize=4096)
    ok, seen = one_line(proc)
    rows.append(["predict, file-size limit 4 KiB (full disk)", "one line; previous file intact", seen,
                 ok and (out / "good.npz").read_bytes() == b"previous"])

    ckpt = next(Path(env["smitunet_results"]).rglob("checkpoint_final.pt"))
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:700])
    proc = run(predict, ["-i", str(work / "in_mode"), "-o", str(work / "out_ckpt"), *base], env)
    ckpt.write_bytes(good)
    rows.append(["predict: truncated checkpoint", "one line naming the checkpoint", *_named(proc, ckpt.name)])

    train = ["999", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", "1", "--device", "cpu",
             "--num_workers", "0"]
    (work / "trunc.pt").write_bytes(good[:700])
    proc = run("smitunet.training.cli", [*train, "--pretrained", str(work / "trunc.pt")], env)
    rows.append(["train --pretrained truncated.pt", "one line naming the file", *_named(proc, "trunc.pt")])

    pp = Path(env["smitunet_preprocessed"]) / "Dataset999_Synthetic"
    for name in ("dataset.json", "splits_final.json", "smitunetPlans.json"):
        saved = (pp / name).read_bytes() if (pp / name).is_file() else None
        (pp / name).write_bytes(b"\xff\xfe not json")
        proc = run("smitunet.training.cli", train, env)
        rows.append([f"train: corrupt {name}", "one line naming the file", *_named(proc, name)])
        if saved is None:
            (pp / name).unlink()
        else:
            (pp / name).write_bytes(saved)

    proc = run("smitunet.training.cli", train, env, fsize=65536)   # the logs fit, a checkpoint does not
    fold = Path(env["smitunet_results"]) / "Dataset999_Synthetic" / "SMITTrainer__smitunetPlans__3d_fullres" / "fold_0"
    ok, seen = one_line(proc, ".pt")
    rows.append(["train, file-size limit 64 KiB (full disk)", "one line naming the checkpoint, no .pt left", seen,
                 ok and not list(fold.glob("*.pt")) and not list(fold.glob(".*part*"))])

    images = work / "pretrain_images"
    for i in range(2):
        write_image(image(10 + i, (32, 32, 32)), Geometry((1.0,) * 3, (0.0,) * 3, EYE, (32, 32, 32)),
                    images / f"good{i}.nii.gz")
    inputs(images, "truncated")
    (images / "good_0000.nii.gz").unlink()
    pretrain = ["-i", str(images), "--preset", "smit_tiny", "--patch", "32", "32", "32", "--batch_size", "1",
                "--iters_per_epoch", "1", "--epochs", "1", "--device", "cpu", "--num_workers", "0"]
    proc = run("smitunet.pretraining.cli", ["-o", str(work / "smit.pt"), *pretrain], env)
    skipped = [line for line in proc.stderr.splitlines() if "skipped: case" in line and "bad_0000" in line]
    ok, seen = one_line(proc, "1 image(s) failed the checks")
    rows.append(["pretrain: truncated image among good", "one line for it; trained on the others; exit 2", seen,
                 ok and len(skipped) == 1 and (work / "smit.pt").is_file()])
    proc = run("smitunet.pretraining.cli", ["-o", str(work / "strict.pt"), "--strict", *pretrain], env)
    ok, seen = one_line(proc, "--strict")
    rows.append(["pretrain --strict: truncated image", "one line, nothing trained", seen,
                 ok and not (work / "strict.pt").exists()])

    proc = run("smitunet.training.cli", train, {**env, "smitunet_results": "/proc/nope"})
    rows.append(["train: results folder /proc/nope", "one line naming the folder", *_named(proc, "/proc/nope")])
    proc = run("smitunet.preprocessing.cli", ["-d", "999", "--preset", "smit_tiny", "-np", "1"],
               {**env, "smitunet_preprocessed": "/proc/nope"})
    rows.append(["plan_and_preprocess: preprocessed folder /proc/nope", "one line naming the folder",
                 *_named(proc, "/proc/nope")])
    return rows


def _named(proc, needle: str) -> tuple[str, bool]:
    ok, seen = one_line(proc, needle)
    return seen, ok


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="smitunet_faults_") as tmp:
        work = Path(tmp)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        for kind in ("raw", "preprocessed", "results"):
            (work / kind).mkdir()
            env[f"smitunet_{kind}"] = str(work / kind)
        tiny_model(work / "results")
        generate_synthetic_dataset(work / "raw", num_training=2, num_test=0, shape=(16, 16, 16))
        prep = run("smitunet.preprocessing.cli", ["-d", "999", "--preset", "smit_tiny", "-np", "1"], env)
        if prep.returncode != 0:
            sys.exit(f"setup failed: {prep.stderr[-500:]}")
        rows = scenarios(work, env)
    table = markdown_table(["scenario", "expected", "observed", "pass"],
                           [[r[0], r[1], r[2].replace("|", "/"), "yes" if r[3] else "NO"] for r in rows])
    passed = sum(bool(r[3]) for r in rows)
    machine = machine_description()
    markdown = (f"# Fault scenarios (issue 15), {now_utc()}\n\n{passed} of {len(rows)} pass.\n\n{table}\n\n"
                + machine_markdown(machine, {}))
    print(markdown)
    md, js = write_results("faults", markdown, {"date": now_utc(), "machine": machine, "passed": passed,
                                                "rows": [dict(zip(("scenario", "expected", "observed", "pass"), r))
                                                         for r in rows]})
    print(f"\nwritten: {md} {js}")
    sys.exit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()

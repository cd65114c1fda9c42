"""Fault scenarios of issue 15, run through the real CLIs: bad inputs, unreadable files, unwritable or full
destinations, SIGKILL at seeded random moments of each long command followed by a rerun, and two predictions into
one folder at once. Prints (and writes under benchmarks/results/) a table scenario | expected | observed | pass.

    python benchmarks/faults.py              # 38 scenarios, 5 kills per command: 4.5 to 6 min on the loaded
                                             # 2-core machine; needs no data
    python benchmarks/faults.py --kills 2    # fewer kill moments per command

The model is an untrained smit_tiny written directly (what it predicts does not matter here, only what the commands
do with bad input); a small synthetic dataset is planned and preprocessed for the training scenarios.

Kills: each command runs once uninterrupted (the reference, and its duration T); then, per moment t drawn uniformly
in [0, 0.9 T) with a fixed seed, it is started in its own process group, the whole group (workers included) gets
SIGKILL at t, every visible file it left must load, and the rerun (the command's resume option) must succeed, lose
at most one epoch and end with the reference's outputs. A run that ends before t (the shared machine got faster than
at the reference) is repeated with t the same fraction of that run's duration, at most 3 tries.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, machine_markdown, markdown_table, now_utc, write_results  # noqa: E402

from smitunet.checkpoint_io import TrainingCheckpoint, load_checkpoint  # noqa: E402
from smitunet.dataset.synthetic import generate_synthetic_dataset  # noqa: E402
from smitunet.imageio import Geometry, read_image, write_image  # noqa: E402
from smitunet.networks import create_network  # noqa: E402
from smitunet.networks.registry import resolve_kwargs  # noqa: E402
from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans  # noqa: E402
from smitunet.preprocessing.case_arrays import load_case_array  # noqa: E402

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


# --- SIGKILL at random moments, then a rerun; two predictions into one folder ------------------------------------

# long enough epochs that a uniform moment often lands in training, checkpointing or validation, not the imports
ITERS = 20
TRAIN_KILL = ["999", "3d_fullres", "0", "--epochs", "5", "--device", "cpu", "--num_workers", "1", "--disable_tta"]
PRETRAIN_KILL = ["--preset", "smit_tiny", "--patch", "32", "32", "32", "--batch_size", "1", "--epochs", "4",
                 "--device", "cpu", "--num_workers", "1"]


def start(module: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """The command in a process group of its own, so one killpg reaches its workers too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        # unbuffered: the log lines of a killed run are all in its files (the epochs it reached)
        return subprocess.Popen([sys.executable, "-m", module, *args], env={**env, "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=err,
                                start_new_session=True)


def kill_at(proc: subprocess.Popen, moment: float, started: float) -> bool:
    """SIGKILL the whole group ``moment`` s after ``started``; False when the command had already ended."""
    try:
        proc.wait(timeout=max(0.0, started + moment - time.perf_counter()))
        return False
    except subprocess.TimeoutExpired:
        pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline:   # the workers die with it: nothing of the group may go on writing
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return True


def load_any(path: Path):
    """The file read back as the project's readers read it; raises on a truncated or corrupt file."""
    name = path.name
    if name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        return read_image(path)[0]
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if name.endswith(".b2nd"):
        return load_case_array(path)
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if name.endswith(".pt"):
        return load_checkpoint(path)
    if name.endswith(".json"):
        return json.loads(path.read_text())
    if name.endswith(".png"):
        import matplotlib.image

        return matplotlib.image.imread(path)
    return path.read_text()


def outputs(folder: Path) -> dict[str, Path]:
    """Visible files under ``folder`` by relative path (atomic_path's ``.name.*.part*`` temporaries are hidden)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def unreadable(folder: Path) -> list[str]:
    bad = []
    for rel, path in outputs(folder).items():
        try:
            load_any(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read back is what is counted
            bad.append(f"{rel} ({type(exc).__name__})")
    return bad


def temporaries(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob(".*.part*")] if folder.is_dir() else []


def same_arrays(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_arrays(a[k], b[k]) for k in a)
    return np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype


def differences(ref: Path, got: Path, names=lambda rel: True) -> list[str]:
    """Files of ``ref`` (those ``names`` keeps) that are missing from ``got`` or read back differently."""
    found, diff = outputs(got), []
    for rel, path in outputs(ref).items():
        if not names(rel):
            continue
        if rel not in found:
            diff.append(f"{rel} missing")
        elif not rel.endswith((".png", ".txt", ".csv", ".pt")):
            a, b = load_any(path), load_any(found[rel])
            if not (a == b if isinstance(a, (dict, list, str)) and not rel.endswith(".npz") else same_arrays(a, b)):
                diff.append(f"{rel} differs")
    return diff


def _train_folder(results: Path) -> Path:
    return results / "Dataset999_Synthetic" / "SMITTrainer__smitunetPlans__3d_fullres" / "fold_0"


def _logged_epochs(text: str) -> int:
    """Epochs the killed run reported as done (its log line comes before that epoch's checkpoint)."""
    return len(set(re.findall(r"epoch (\d+): ", text)))


def _compare_training(ref: Path, got: Path) -> list[str]:
    """tests/test_train_cli.py's exact-resume comparison: weights, loss and lr curves of checkpoint_final."""
    a, b = load_checkpoint(ref / "checkpoint_final.pt"), load_checkpoint(got / "checkpoint_final.pt")
    diff = [k for k, v in a["state_dict"].items()
            if not torch.allclose(b["state_dict"][k], v, atol=1e-6, rtol=1e-5)][:3]
    if a["epoch"] != b["epoch"]:
        diff.append(f"epoch {b['epoch']} != {a['epoch']}")
    elif not (np.allclose(b["logs"]["train_loss"], a["logs"]["train_loss"], rtol=1e-5)
              and np.allclose(b["logs"]["lr"], a["logs"]["lr"], rtol=1e-9)):
        diff.append("loss or lr curve")
    epochs = [row["epoch"] for row in json.loads((got / "metrics.json").read_text())]
    if epochs != list(range(a["epoch"])):
        diff.append(f"metrics.json epochs {epochs}")
    return diff + differences(ref / "validation", got / "validation", lambda rel: rel.endswith(".nii.gz"))


def _compare_pretraining(ref: Path, got: Path) -> list[str]:
    """tests/test_pretrain_run.py's resume comparison: the exported encoder bit for bit, one log row per epoch."""
    a, b = load_checkpoint(ref / "smit.pt"), load_checkpoint(got / "smit.pt")
    diff = [k for k, v in a["encoder"].items() if not torch.equal(b["encoder"][k], v)][:3]
    if a["meta"]["steps"] != b["meta"]["steps"]:
        diff.append(f"steps {b['meta']['steps']} != {a['meta']['steps']}")
    rows = [r["epoch"] for r in json.loads((got / "smit_log.json").read_text())]
    if rows != [r["epoch"] for r in json.loads((ref / "smit_log.json").read_text())]:
        diff.append(f"smit_log.json epochs {rows}")
    return diff


def kill_commands(work: Path, env: dict, iters: int = ITERS) -> dict[str, dict]:
    """Per command: how to run it into a folder, how to rerun it, where its outputs are and how to compare them.
    ``iters``: training iterations per epoch (pretraining takes half)."""
    raw = Path(env["smitunet_raw"])
    generate_synthetic_dataset(raw, dataset_id=998, name="KillPrep", num_training=8, num_test=0, shape=(24, 24, 24))
    images = work / "kill_images"
    for i in range(2):
        write_image(image(20 + i, (32, 32, 32)), Geometry((1.0,) * 3, (0.0,) * 3, EYE, (32, 32, 32)),
                    images / f"img{i}.nii.gz")
    cases = work / "kill_cases"
    for i in range(8):
        write_image(image(30 + i), GEO, cases / f"case{i}_0000.nii.gz")
    predict = ["-i", str(cases), "--disable_tta", "--device", "cpu", "--save_probabilities", "-d", "990"]
    return {
        "plan_and_preprocess": dict(
            module="smitunet.preprocessing.cli", args=lambda d: ["-d", "998", "--preset", "smit_tiny", "-np", "2"],
            env=lambda d: {**env, "smitunet_preprocessed": str(d)}, rerun=lambda d: [],
            outputs=lambda d: d / "Dataset998_KillPrep", resume="the default skip of finished cases",
            compare=lambda r, g: differences(r, g)),
        "train": dict(
            module="smitunet.training.cli", args=lambda d: [*TRAIN_KILL, "--iters_per_epoch", str(iters)],
            env=lambda d: {**env, "smitunet_results": str(d)}, rerun=lambda d: ["--c"],
            outputs=lambda d: _train_folder(d), resume="--c", compare=_compare_training),
        "pretrain": dict(
            module="smitunet.pretraining.cli", args=lambda d: ["-o", str(d / "smit.pt"), "-i", str(images),
                                                               *PRETRAIN_KILL, "--iters_per_epoch",
                                                               str(max(1, iters // 2))],
            env=lambda d: env, resume="--c",
            # --c needs the state file of a finished epoch; before one the rerun is a fresh start (--c refuses it)
            rerun=lambda d: ["--c"] if (d / "smit_state.pt").is_file() else [],
            outputs=lambda d: d, compare=_compare_pretraining),
        "predict": dict(
            module="smitunet.inference.cli", args=lambda d: [*predict, "-o", str(d)], env=lambda d: env,
            rerun=lambda d: ["--continue_prediction"], outputs=lambda d: d, resume="--continue_prediction",
            compare=lambda r, g: differences(r, g, lambda rel: not rel.endswith(".json"))),
    }


def _epochs_lost(name: str, killed_text: str, resumed_at: int | None, rerun_text: str) -> tuple[int, str]:
    """(completed epochs the rerun has to redo, text); 0 for commands without epochs."""
    if name == "train":
        found = re.search(r"resumed from \S+: (\d+) completed epochs", rerun_text)
        resumed_at = int(found.group(1)) if found else 0
    elif name != "pretrain":
        return 0, ""
    logged = _logged_epochs(killed_text)
    return max(0, logged - resumed_at), f"{logged} epoch(s) logged, resumed at {resumed_at}; "


def _pretraining_epoch(out_dir: Path) -> int:
    """The epoch --c resumes from: that of the state file (0 without one)."""
    state = out_dir / "smit_state.pt"
    return int(load_checkpoint(state)["epoch"]) if state.is_file() else 0


def kill_scenarios(work: Path, env: dict, kills: int = 5, seed: int = 15, only=None, iters: int = ITERS) -> list[list]:
    """``kills`` seeded moments per command (``only``: a subset of the commands, e.g. a short run in the tests)."""
    rows = []
    rng = np.random.default_rng(seed)
    for name, c in kill_commands(work, env, iters).items():
        # drawn for every command, so ``only`` keeps the others' moments; within 90 % of T so that a run a little
        # faster than the reference is still killed
        moments = rng.uniform(0, 0.9, kills)
        if only is not None and name not in only:
            continue
        ref = work / "kill" / name / "ref"
        t0 = time.perf_counter()
        proc = start(c["module"], c["args"](ref), c["env"](ref), work / "kill" / name / "ref.log")
        if proc.wait() != 0:
            rows.append([f"{name}: uninterrupted reference", "exit 0", f"exit {proc.returncode}", False])
            continue
        duration = time.perf_counter() - t0
        for i, fraction in enumerate(moments):
            moment = float(fraction * duration)
            folder, log = work / "kill" / name / f"k{i}", work / "kill" / name / f"k{i}.log"
            for attempt in range(1, 4):
                t0 = time.perf_counter()
                killed = kill_at(start(c["module"], c["args"](folder), c["env"](folder), log), moment, t0)
                if killed:
                    break
                # the shared machine got faster than at the reference: the same fraction of this run's duration
                moment = float(fraction * (time.perf_counter() - t0))
                shutil.rmtree(folder, ignore_errors=True)
            out_dir = c["outputs"](folder)
            killed_text = log.with_suffix(".out").read_text() + log.with_suffix(".err").read_text()
            broken = unreadable(out_dir)   # what the killed run left must load already
            left = len(temporaries(out_dir))
            resumed_at = _pretraining_epoch(out_dir) if name == "pretrain" and not broken else None
            rerun = run(c["module"], [*c["args"](folder), *c["rerun"](folder)], c["env"](folder))
            lost, epochs = _epochs_lost(name, killed_text, resumed_at, rerun.stdout + rerun.stderr)
            broken += unreadable(out_dir)
            diff = c["compare"](c["outputs"](ref), out_dir) if rerun.returncode == 0 else ["rerun failed"]
            ok = killed and rerun.returncode == 0 and not broken and lost <= 1 and not diff
            how = (f"killed{f' (try {attempt}, at {moment:.1f} s)' if attempt > 1 else ''}" if killed
                   else "ended before the kill 3 times")
            seen = (f"{how}, {left} temp file(s) left; rerun exit "
                    f"{rerun.returncode}; {epochs}unreadable: {', '.join(broken[:2]) or 'none'}; "
                    f"differs: {', '.join(diff[:3]) or 'nothing'}")
            if rerun.returncode != 0:
                seen += f" ({(rerun.stderr.strip().splitlines() or ['?'])[-1][:120]})"
            rows.append([f"SIGKILL {name} at {fraction * duration:.1f} of {duration:.1f} s, rerun ({c['resume']})",
                         "every file loads; rerun exit 0; <= 1 epoch lost; outputs as uninterrupted", seen, ok])
    return rows


def concurrent_predictions(work: Path, env: dict) -> list[list]:
    """Two smitunet_predict runs into one folder at once: both end, and every file equals a run alone."""
    c = kill_commands(work, env)["predict"]
    ref, shared = work / "kill" / "predict" / "ref", work / "concurrent"
    if not ref.is_dir():
        run(c["module"], c["args"](ref), env)
    procs = [start(c["module"], c["args"](shared), env, work / f"concurrent{i}.log") for i in range(2)]
    codes = [p.wait() for p in procs]
    broken, diff = unreadable(shared), differences(ref, shared, lambda rel: not rel.endswith(".json"))
    errors = [(work / f"concurrent{i}.err").read_text().strip().splitlines()[-1:] for i in range(2)]
    ok = codes == [0, 0] and not broken and not diff and not temporaries(shared)
    return [["two predict runs into one folder at once", "both exit 0; every file loads and equals a single run's",
             f"exits {codes}; unreadable: {', '.join(broken[:2]) or 'none'}; differs: {', '.join(diff[:3]) or 'nothing'}"
             + (f"; {errors}" if codes != [0, 0] else ""), ok]]


def _named(proc, needle: str) -> tuple[str, bool]:
    ok, seen = one_line(proc, needle)
    return seen, ok


def prepare(work: Path) -> dict:
    """Folders, the tiny model and the planned synthetic dataset every scenario uses; returns the CLIs' env."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for kind in ("raw", "preprocessed", "results"):
        (work / kind).mkdir()
        env[f"smitunet_{kind}"] = str(work / kind)
    tiny_model(work / "results")
    generate_synthetic_dataset(work / "raw", num_training=4, num_test=0, shape=(16, 16, 16))
    prep = run("smitunet.preprocessing.cli", ["-d", "999", "--preset", "smit_tiny", "-np", "1"], env)
    if prep.returncode != 0:
        sys.exit(f"setup failed: {prep.stderr[-500:]}")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="SIGKILL moments per command (default 5)")
    parser.add_argument("--seed", type=int, default=15, help="seed of the kill moments")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smitunet_faults_") as tmp:
        work = Path(tmp)
        env = prepare(work)
        rows = scenarios(work, env)
        rows += kill_scenarios(work, env, args.kills, args.seed)
        rows += concurrent_predictions(work, env)
    wall = time.perf_counter() - t0
    table = markdown_table(["scenario", "expected", "observed", "pass"],
                           [[r[0], r[1], r[2].replace("|", "/"), "yes" if r[3] else "NO"] for r in rows])
    passed = sum(bool(r[3]) for r in rows)
    machine = machine_description()
    command = f"python benchmarks/faults.py --kills {args.kills} --seed {args.seed}"
    markdown = (f"# Fault scenarios (issue 15), {now_utc()}\n\n{passed} of {len(rows)} pass; `{command}` took "
                f"{wall / 60:.1f} min.\n\n{table}\n\n" + machine_markdown(machine, {}))
    print(markdown)
    md, js = write_results("faults", markdown, {"date": now_utc(), "machine": machine, "passed": passed,
                                                "command": command, "wall_s": round(wall, 1),
                                                "rows": [dict(zip(("scenario", "expected", "observed", "pass"), r))
                                                         for r in rows]})
    print(f"\nwritten: {md} {js}")
    sys.exit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()

"""Training runs of both tools for the comparison: a short calibration run and a wall-clock-budgeted run.

The budget is implemented on our side, the same way for both tools (smitunet_train has no time-budget flag):
1. a calibration run (2 epochs of a few iterations) gives each tool's epoch time at its own plans;
2. each tool then trains with ``epochs = (budget - startup) / epoch time`` so that its learning-rate
   schedule runs to its end inside the budget;
3. a safety stop: nnU-Net's loop (our driver) stops after an epoch when the next one would end past the
   budget; smitunet_train is stopped at 1.1 x budget if it has not written checkpoint_final.pt, and then
   ``smitunet_train --c --epochs <completed>`` turns its last completed epoch into the final checkpoint
   and runs the fold validation.
The clock of both starts when the process is launched (imports and data-loader start-up count).
Epoch time includes each tool's per-epoch pseudo-validation; both run iters/5 validation batches.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import _nnunet_env as nn
import _smitunet_env as su
from _measure import run_measured, tail

TRAINER = "SMITTrainer"


def val_iters(iters: int) -> int:
    return max(1, min(50, iters // 5))  # smitunet's rule (Trainer.val_iterations), applied to nnU-Net too


def _steady(values: list[float]) -> float:
    """Median over the epochs after the first (which carries warm-up), or the only epoch."""
    return statistics.median(values[1:] if len(values) > 1 else values)


# -- nnU-Net -----------------------------------------------------------------------------------------
def run_nnunet(tag: str, epochs: int, iters: int, budget_s: float | None, validate: bool, log=print) -> dict:
    env = nn.nnunet_env()
    env["nnUNet_results"] = str(nn.NNUNET_ROOT / f"results_{tag}")
    shutil.rmtree(env["nnUNet_results"], ignore_errors=True)
    out = nn.WORK_DIR / f"nnunet_train_{tag}.json"
    out.unlink(missing_ok=True)
    command = [nn.venv_python(), Path(__file__).resolve().parent / "_nnunet_driver.py", "--fold", "0",
               "--epochs", epochs, "--iters", iters, "--val-iters", val_iters(iters), "--t0", time.time(),
               "--out", out] + (["--budget-s", budget_s] if budget_s else []) + (["--validate"] if validate else [])
    log(f"nnU-Net training ({tag}): {epochs} epochs x {iters} iterations" + (f", budget {budget_s:.0f} s" if budget_s else ""))
    m = run_measured(command, env=env, log_path=nn.WORK_DIR / f"nnunet_train_{tag}.log").to_dict()
    if m["returncode"] != 0 or not out.exists():
        raise RuntimeError(f"nnU-Net training ({tag}) failed:\n{tail(m['log_path'])}")
    r = json.loads(out.read_text())
    result = {"measurement": m, "epochs_done": len(r["epochs"]), "planned_epochs": epochs, "iters": iters,
              "stopped_by_budget": r["stopped_by_budget"], "train_wall_s": r["train_wall_s"],
              "epoch_s": _steady([e["epoch_s"] for e in r["epochs"]]),
              "train_s_per_iter": _steady([e["train_s"] / e["iters"] for e in r["epochs"]]),
              "epoch_overhead_s": _steady([e["epoch_s"] - e["train_s"] for e in r["epochs"]]),
              "data_wait_fraction": _steady([e["data_wait_fraction"] for e in r["epochs"]]),
              "startup_s": r["train_wall_s"] - sum(e["epoch_s"] for e in r["epochs"]),
              "patch_size": r["patch_size"], "batch_size": r["batch_size"], "raw": r}
    if validate:
        result["validation_wall_s"] = r["validation_wall_s"]
        result["dice"] = read_dice(Path(r["validation_summary"]))
        result["model_results_dir"] = env["nnUNet_results"]
    return result


# -- smitunet ----------------------------------------------------------------------------------------
def smitunet_fold_dir(results_root: Path) -> Path:
    return results_root / nn.DATASET_NAME / f"{TRAINER}__smitunetPlans__3d_fullres" / "fold_0"


def _train_command(epochs: int, iters: int, pretrained: Path | None, extra: list[str] = (),
                   precision: str = "fp32") -> list:
    command = [su.cli("smitunet_train"), nn.DATASET_ID, "3d_fullres", "0", "-tr", TRAINER, "--device", "cpu",
               "--epochs", epochs, "--iters_per_epoch", iters, "--precision", precision, *extra]
    return command + (["--pretrained", pretrained] if pretrained else [])


def run_smitunet(tag: str, epochs: int, iters: int, budget_s: float | None, validate: bool,
                 pretrained: Path | None = None, log=print, precision: str = "fp32") -> dict:
    env = su.smitunet_env(f"results_{tag}")
    results_root = Path(env["smitunet_results"])
    shutil.rmtree(results_root, ignore_errors=True)
    fold_dir = smitunet_fold_dir(results_root)
    final = fold_dir / "checkpoint_final.pt"
    t0 = time.time()

    def stop(elapsed: float) -> bool:
        if final.exists():  # training is over; without validate, skip smitunet's automatic fold validation
            return not validate
        return budget_s is not None and elapsed > 1.1 * budget_s

    log(f"smitunet training ({tag}): {epochs} epochs x {iters} iterations" + (f", budget {budget_s:.0f} s" if budget_s else "")
        + (f", pretrained {pretrained}" if pretrained else "") + (f", {precision}" if precision != "fp32" else ""))
    log_path = nn.WORK_DIR / f"smitunet_train_{tag}.log"
    m = run_measured(_train_command(epochs, iters, pretrained, precision=precision), env=env, log_path=log_path, stop_when=stop).to_dict()
    stopped_by_budget = m["stopped_early"] and not final.exists()
    if m["returncode"] != 0 and not m["stopped_early"]:
        raise RuntimeError(f"smitunet training ({tag}) failed:\n{tail(log_path)}")
    metrics = fold_dir / "metrics.json"
    rows = json.loads(metrics.read_text()) if metrics.exists() else []
    if stopped_by_budget and not rows:
        raise RuntimeError(f"smitunet ({tag}) completed no epoch within the budget:\n{tail(log_path)}")
    if stopped_by_budget:  # turn the last completed epoch into checkpoint_final, then validate
        log(f"smitunet ({tag}) stopped by the budget after {len(rows)} epochs; finishing with --c --epochs {len(rows)}")
        finish = run_measured(_train_command(len(rows), iters, pretrained, ["--c"], precision), env=env,
                              log_path=nn.WORK_DIR / f"smitunet_train_{tag}_finish.log").to_dict()
        m["finish"] = finish
    # A run stopped by the budget trained until it was stopped (the finishing run only saves and validates).
    train_wall_s = m["wall_s"] if stopped_by_budget or not final.exists() else final.stat().st_mtime - t0
    result = {"measurement": m, "epochs_done": len(rows), "planned_epochs": epochs, "iters": iters,
              "stopped_by_budget": stopped_by_budget, "train_wall_s": train_wall_s,
              "epoch_s": _steady([r["epoch_time"] for r in rows]),
              "train_s_per_iter": _steady([r["train_time"] / iters for r in rows]),
              "epoch_overhead_s": _steady([r["epoch_time"] - r["train_time"] for r in rows]),
              "data_wait_fraction": _steady([r["data_wait_fraction"] for r in rows]),
              "startup_s": train_wall_s - sum(r["epoch_time"] for r in rows), **_smitunet_plan()}
    if validate:
        summary = fold_dir / "validation" / "summary.json"
        if not summary.exists():
            raise RuntimeError(f"smitunet ({tag}): no {summary}:\n{tail(log_path)}")
        result["validation_wall_s"] = summary.stat().st_mtime - final.stat().st_mtime
        result["dice"] = read_dice(summary)
        result["model_results_dir"] = str(results_root)
    return result


def _smitunet_plan() -> dict:
    plans = json.loads((su.preprocessed_dataset_dir() / "smitunetPlans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    return {"patch_size": config["patch_size"], "batch_size": config["batch_size"],
            "preset": config["network"]["name"]}


# -- shared ------------------------------------------------------------------------------------------
def read_dice(summary_path: Path) -> dict:
    """{"mean": .., "1": .., "2": ..} from either tool's validation/summary.json ("Dice" or "dice")."""
    summary = json.loads(Path(summary_path).read_text())

    def dice(entry: dict) -> float:
        return float(entry.get("Dice", entry.get("dice")))

    out = {"mean": dice(summary["foreground_mean"])}
    out.update({str(k): dice(v) for k, v in summary["mean"].items()})
    return out


def epoch_seconds(calibration: dict, iters_calibration: int, iters: int) -> float:
    """Seconds of an epoch of ``iters`` iterations: its training iterations plus a per-epoch overhead
    (pseudo-validation, loader start-up). Scaling the whole short calibration epoch by ``iters`` would count that
    overhead ``iters / iters_calibration`` times and leave a third of the budget unused; the overhead is scaled by
    the validation batches instead, which over-counts its fixed part a little (both tools alike)."""
    overhead = calibration["epoch_overhead_s"] * val_iters(iters) / val_iters(iters_calibration)
    return calibration["train_s_per_iter"] * iters + overhead


def budget_epochs(calibration: dict, iters_calibration: int, iters: int, budget_s: float) -> int:
    """Epochs of ``iters`` iterations (:func:`epoch_seconds`) that fit in the budget after the measured start-up."""
    epoch_s = epoch_seconds(calibration, iters_calibration, iters)
    return max(1, int((budget_s - calibration["startup_s"]) // epoch_s))

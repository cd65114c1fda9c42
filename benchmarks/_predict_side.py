"""Prediction runs of both tools' fold-0 models through their CLIs, with and without mirroring.

Both read the same input folder (raw-named ``{case}_0000.nii.gz`` links to fold-0 validation images),
one worker process each for preprocessing and export (``-npp 1 -nps 1`` for nnU-Net, smitunet's default),
step size 0.5, CPU. Seconds per case = wall time of the whole command / cases, so process start-up
(imports, model loading) is included the way a user meets it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import _nnunet_env as nn
import _smitunet_env as su
from _measure import run_measured, tail
from _train_side import TRAINER


def make_input_folder(cases: list[str]) -> Path:
    folder = nn.WORK_DIR / "predict_input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in cases:
        source = nn.raw_dataset_dir() / "imagesTr" / f"{case}_0000.nii.gz"
        (folder / source.name).symlink_to(source)
    return folder


def _nnunet_command(inp: Path, out: Path, tta: bool) -> list:
    command = [nn.venv_bin("nnUNetv2_predict"), "-i", inp, "-o", out, "-d", nn.DATASET_ID, "-c", "3d_fullres",
               "-f", "0", "-tr", "nnUNetTrainer", "-chk", "checkpoint_final.pth", "-device", "cpu",
               "-npp", "1", "-nps", "1", "-step_size", "0.5"]
    return command + ([] if tta else ["--disable_tta"])


def _smitunet_command(inp: Path, out: Path, tta: bool, precision: str = "fp32") -> list:
    command = [su.cli("smitunet_predict"), "-i", inp, "-o", out, "-d", nn.DATASET_ID, "-c", "3d_fullres",
               "-tr", TRAINER, "-f", "0", "-chk", "final", "--device", "cpu", "--step_size", "0.5", "-npp", "1",
               "--precision", precision]
    return command + ([] if tta else ["--disable_tta"])


def predict(tool: str, model_results_dir: str, inp: Path, tta: bool, log=print, precision: str = "fp32") -> dict:
    """``precision`` applies to smitunet only (nnU-Net's CPU path has no autocast)."""
    cases = len(list(inp.glob("*.nii.gz")))
    out = nn.WORK_DIR / f"predict_{tool}_{'tta' if tta else 'notta'}"
    shutil.rmtree(out, ignore_errors=True)
    if tool == "nnunet":
        env = nn.nnunet_env()
        env["nnUNet_results"] = model_results_dir
        command = _nnunet_command(inp, out, tta)
    else:
        env = su.smitunet_env()
        env["smitunet_results"] = model_results_dir
        command = _smitunet_command(inp, out, tta, precision)
    log(f"{tool}: predicting {cases} cases {'with' if tta else 'without'} mirroring")
    m = run_measured(command, env=env, log_path=nn.WORK_DIR / f"{out.name}.log").to_dict()
    written = len(list(out.glob("*.nii.gz"))) if out.exists() else 0
    if m["returncode"] != 0 or written != cases:
        raise RuntimeError(f"{tool} prediction wrote {written}/{cases} cases (exit {m['returncode']}):\n"
                           f"{tail(m['log_path'])}")
    return {"measurement": m, "cases": cases, "s_per_case": m["wall_s"] / cases}

"""nnU-Net v2 side of the benchmarks: its own virtual environment, folders and dataset conversion.

nnU-Net is never a dependency of smitunet: it lives in ``benchmarks/work/venv-nnunet``, created on first
use. torch is installed there first and pinned while nnunetv2 installs, because nnunetv2 → timm →
torchvision would otherwise pull the newest torch with several GB of CUDA libraries.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
MSD_HIPPOCAMPUS = REPO_DIR.parent / "shared" / "data" / "Task04_Hippocampus"
DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"

NNUNET_VERSION = "2.8.1"
TORCH_VERSION = "2.13.0"
VENV_DIR = WORK_DIR / "venv-nnunet"
NNUNET_ROOT = WORK_DIR / "nnunet"


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def venv_bin(name: str) -> Path:
    return VENV_DIR / "bin" / name


def _installed_nnunet_version() -> str | None:
    if not venv_python().exists():
        return None
    probe = subprocess.run([str(venv_python()), "-c",
                            "import importlib.metadata as m; print(m.version('nnunetv2'))"],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_venv(log=print) -> Path:
    """Create/reuse the nnU-Net venv; return its python."""
    if _installed_nnunet_version() == NNUNET_VERSION:
        return venv_python()
    log(f"installing nnunetv2=={NNUNET_VERSION} into {VENV_DIR} (torch=={TORCH_VERSION} first; a few minutes)")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)
    constraints = WORK_DIR / "nnunet-constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\n")
    subprocess.run(pip + [f"nnunetv2=={NNUNET_VERSION}", "-c", str(constraints)], check=True)
    return venv_python()


def nnunet_env(threads: int | None = None) -> dict:
    """Environment for every nnU-Net command: its three folders under benchmarks/work/nnunet.

    ``nnUNet_def_n_proc`` (export/validation pools, default 8) is set to the core count so that a
    2-core machine does not run 8 export workers; data-augmentation workers keep nnU-Net's own
    default (min(12, cores)).
    """
    env = dict(os.environ)
    for sub, var in (("raw", "nnUNet_raw"), ("preprocessed", "nnUNet_preprocessed"),
                     ("results", "nnUNet_results")):
        (NNUNET_ROOT / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(NNUNET_ROOT / sub)
    env["nnUNet_def_n_proc"] = str(threads or os.cpu_count())
    env.pop("PYTHONPATH", None)  # never let smitunet's environment leak into the nnU-Net venv
    return env


def raw_dataset_dir() -> Path:
    return NNUNET_ROOT / "raw" / DATASET_NAME


def preprocessed_dataset_dir() -> Path:
    return NNUNET_ROOT / "preprocessed" / DATASET_NAME


def results_dataset_dir() -> Path:
    return NNUNET_ROOT / "results" / DATASET_NAME


def _stage_msd_folder(source: Path) -> Path:
    """nnUNetv2_convert_MSD_dataset insists on an ``imagesTs`` folder and a ``test`` key in dataset.json;
    the shared Task04 copy has neither. Stage a look-alike of symlinks that has both."""
    staged = WORK_DIR / "msd" / source.name
    staged.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "labelsTr"):
        link = staged / sub
        if not link.exists():
            link.symlink_to(source / sub, target_is_directory=True)
    (staged / "imagesTs").mkdir(exist_ok=True)
    meta = json.loads((source / "dataset.json").read_text())
    if not isinstance(meta.get("test"), list):
        meta["test"] = []
    (staged / "dataset.json").write_text(json.dumps(meta, indent=1))
    return staged


def ensure_converted(source: Path = MSD_HIPPOCAMPUS, log=print) -> Path:
    """Convert the MSD task with nnU-Net's own converter once; return the raw dataset folder."""
    target = raw_dataset_dir()
    if (target / "dataset.json").exists() and len(list((target / "labelsTr").glob("*.nii.gz"))) > 0:
        return target
    if not (source / "dataset.json").exists():
        raise SystemExit(f"error: MSD Hippocampus not found at {source}")
    staged = _stage_msd_folder(source)
    log(f"nnU-Net: converting {source} -> {target}")
    subprocess.run([str(venv_bin("nnUNetv2_convert_MSD_dataset")), "-i", str(staged),
                    "-np", str(os.cpu_count())], env=nnunet_env(), check=True,
                   stdout=subprocess.DEVNULL)
    return target


def plan_and_preprocess_command(num_processes: int) -> list[str]:
    """What a user types for the 3D full-resolution configuration (the one both tools train)."""
    return [str(venv_bin("nnUNetv2_plan_and_preprocess")), "-d", str(DATASET_ID), "-c", "3d_fullres",
            "-np", str(num_processes), "-npfp", str(num_processes), "--verify_dataset_integrity"]


def nnunet_versions() -> dict:
    probe = subprocess.run(
        [str(venv_python()), "-c",
         "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
         "('nnunetv2', 'torch', 'numpy', 'batchgeneratorsv2', 'dynamic_network_architectures')}))"],
        capture_output=True, text=True)
    return json.loads(probe.stdout) if probe.returncode == 0 else {}

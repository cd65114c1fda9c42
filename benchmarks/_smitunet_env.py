"""smitunet side of the benchmarks: its folders under benchmarks/work/smitunet and its CLIs.

Every smitunet step runs through the installed console scripts, exactly as a user types them, in child
processes so that wall time and peak memory are measured the same way as for nnU-Net.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _nnunet_env import DATASET_ID, DATASET_NAME, MSD_HIPPOCAMPUS, WORK_DIR

SMITUNET_ROOT = WORK_DIR / "smitunet"


def cli(name: str) -> str:
    """Path of a smitunet console script installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"error: {name} not found; install smitunet first (pip install -e .)")
    return found


def smitunet_env(results_name: str = "results") -> dict:
    """Environment for smitunet commands; ``results_name`` lets runs keep separate results folders."""
    env = dict(os.environ)
    for sub, var in (("raw", "smitunet_raw"), ("preprocessed", "smitunet_preprocessed"),
                     (results_name, "smitunet_results")):
        (SMITUNET_ROOT / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(SMITUNET_ROOT / sub)
    return env


def work_env(work: Path, results: str, threads: int) -> dict[str, str]:
    """Environment for smitunet commands on the folders of one benchmark's work folder, with this checkout's
    smitunet first on the path, so a frozen worktree can run a benchmark while development goes on."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env.update(smitunet_raw=str(work / "raw"), smitunet_preprocessed=str(work / "preprocessed"),
               smitunet_results=str(work / results), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p))
    return env


def raw_dataset_dir() -> Path:
    return SMITUNET_ROOT / "raw" / DATASET_NAME


def preprocessed_dataset_dir() -> Path:
    return SMITUNET_ROOT / "preprocessed" / DATASET_NAME


def ensure_converted(source: Path = MSD_HIPPOCAMPUS, log=print) -> Path:
    target = raw_dataset_dir()
    if (target / "dataset.json").exists() and any((target / "labelsTr").glob("*")):
        return target
    log(f"smitunet: converting {source} -> {target}")
    subprocess.run([cli("smitunet_convert_msd"), "-i", str(source), "-d", str(DATASET_ID)],
                   env=smitunet_env(), check=True, stdout=subprocess.DEVNULL)
    return target


def plan_and_preprocess_command(num_processes: int, preset: str | None = None) -> list[str]:
    command = [cli("smitunet_plan_and_preprocess"), "-d", str(DATASET_ID), "-np", str(num_processes),
               "--verify_dataset_integrity"]
    return command + (["--preset", preset] if preset else [])


def smitunet_versions() -> dict:
    import numpy
    import torch

    return {"smitunet": importlib.metadata.version("smitunet"), "torch": torch.__version__,
            "numpy": numpy.__version__}

"""Locate trained models: ``results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_F/checkpoint_{best,final}.pt``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from smitunet.errors import SmitunetError
from smitunet.postprocessing import load_postprocessing
from smitunet.utils.files import load_json
from smitunet.utils.log import logger
from smitunet.paths import ENSEMBLES_FOLDER, INFERENCE_INFORMATION_FILE, ensemble_name, resolve_dataset_name, \
    results_dir

_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


@dataclass(frozen=True)
class TrainedModel:
    folder: Path                 # .../DatasetXXX/TRAINER__PLANS__CONFIG
    dataset: str
    trainer: str
    plans: str
    configuration: str
    folds: tuple[str, ...]       # folds holding the requested checkpoint

    @property
    def identifier(self) -> str:
        return f"{self.dataset}/{self.folder.name}"

    def checkpoint(self, fold: str, checkpoint_name: str) -> Path:
        return self.folder / f"fold_{fold}" / f"checkpoint_{checkpoint_name}.pt"


def _fold_sort_key(fold: str):
    return (fold == "all", int(fold) if fold.isdigit() else 0)


def trained_folds(model_dir: Path, checkpoint_name: str) -> tuple[str, ...]:
    folds = []
    for child in model_dir.iterdir() if model_dir.is_dir() else []:
        m = _FOLD_RE.match(child.name)
        if m and (child / f"checkpoint_{checkpoint_name}.pt").is_file():
            folds.append(m.group(1))
    return tuple(sorted(folds, key=_fold_sort_key))


def find_trained_models(dataset: str | int | None = None, checkpoint_name: str = "final") -> list[TrainedModel]:
    """Every model folder (in one dataset, or all) with at least one fold holding the checkpoint."""
    base = results_dir()
    if dataset is not None:
        dataset_dirs = [base / resolve_dataset_name(dataset, search=("results", "raw", "preprocessed"))]
    else:
        dataset_dirs = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("Dataset")) \
            if base.is_dir() else []
    models = []
    for ddir in dataset_dirs:
        for mdir in sorted(p for p in ddir.iterdir() if p.is_dir()) if ddir.is_dir() else []:
            parts = mdir.name.split("__")
            if len(parts) != 3:
                continue
            folds = trained_folds(mdir, checkpoint_name)
            if folds:
                models.append(TrainedModel(mdir, ddir.name, parts[0], parts[1], parts[2], folds))
    return models


def select_model(dataset: str | int | None = None, configuration: str | None = None, trainer: str | None = None,
                 plans: str | None = None, checkpoint_name: str = "final") -> TrainedModel:
    """The single trained model matching the filters; a one-line error listing candidates otherwise."""
    models = find_trained_models(dataset, checkpoint_name)
    chosen = [m for m in models if (configuration is None or m.configuration == configuration)
              and (trainer is None or m.trainer == trainer) and (plans is None or m.plans == plans)]
    if len(chosen) == 1:
        return chosen[0]
    where = f"{results_dir()}" + (f" for dataset {dataset}" if dataset is not None else "")
    if not chosen:
        hint = f"; trained models: {', '.join(m.identifier for m in models)}" if models else \
            " (train one with smitunet_train, or set $smitunet_results)"
        raise SmitunetError(f"no trained model with checkpoint_{checkpoint_name}.pt matches in {where}{hint}")
    raise SmitunetError(f"{len(chosen)} trained models match in {where}: "
                        f"{', '.join(m.identifier for m in chosen)}; choose with -d / -c / -tr / -p")


def select_models(dataset: str | int | None = None, configurations=None, trainers=None, plans=None,
                  checkpoint_name: str = "final") -> list[TrainedModel]:
    """One model per member: each of -c / -tr / -p gives one value (shared by all) or one per member."""
    specs = {"configuration": configurations or [None], "trainer": trainers or [None], "plans": plans or [None]}
    n = max(len(v) for v in specs.values())
    bad = [f"{k} ({len(v)})" for k, v in specs.items() if len(v) not in (1, n)]
    if bad:
        raise SmitunetError(f"an ensemble of {n} models needs 1 or {n} values per option; got {', '.join(bad)}")
    models = [select_model(dataset, *(specs[k][i if len(specs[k]) > 1 else 0]
                                      for k in ("configuration", "trainer", "plans")), checkpoint_name)
              for i in range(n)]
    names = [m.identifier for m in models]
    if len(set(names)) != len(names):
        raise SmitunetError(f"the same model is named twice in the ensemble: {', '.join(names)}")
    return models


def ensemble_folder(models: list[TrainedModel]) -> Path:
    """Where smitunet_find_best_configuration keeps an ensemble's postprocessing.json."""
    return results_dir() / models[0].dataset / ENSEMBLES_FOLDER / ensemble_name([m.folder.name for m in models])


def resolve_folds(model: TrainedModel, folds: list[str] | None, checkpoint_name: str) -> list[str]:
    if not folds:
        return list(model.folds)
    missing = [f for f in folds if f not in model.folds]
    if missing:
        raise SmitunetError(f"{model.folder}: fold(s) {', '.join(missing)} have no checkpoint_{checkpoint_name}.pt; "
                            f"trained folds: {', '.join(model.folds) or 'none'}")
    return [str(f) for f in folds]


def choose_models(dataset: str | None, configurations: Sequence[str] | None = None,
                  trainers: Sequence[str] | None = None, plans: Sequence[str] | None = None,
                  checkpoint: str = "final", disable_ensemble: bool = False) -> list[TrainedModel]:
    """The models to predict with: those named, else (with only a dataset) find_best_configuration's choice when
    several are trained, else the only one."""
    """The requested model(s); when several match only -d, what smitunet_find_best_configuration picked."""
    if dataset is not None and not (configurations or trainers or plans):
        models = find_trained_models(dataset, checkpoint)
        info_file = results_dir() / models[0].dataset / INFERENCE_INFORMATION_FILE if models else None
        if len(models) > 1 and info_file.is_file():
            return models_from_information(dataset, info_file, checkpoint, disable_ensemble)
    return select_models(dataset, configurations, trainers, plans, checkpoint)


def models_from_information(dataset, info_file, checkpoint: str, disable_ensemble: bool) -> list[TrainedModel]:
    info = load_json(info_file)
    best = info.get("best_single", info["best"]) if disable_ensemble else info["best"]
    members = best.get("members") or [best]
    try:
        models = [select_model(dataset, m["configuration"], m["trainer"], m["plans"], checkpoint) for m in members]
    except (KeyError, TypeError):
        raise SmitunetError(f"{info_file}: not a valid inference information file; re-run "
                            "smitunet_find_best_configuration") from None
    logger.warning(f"using the best {'ensemble' if len(models) > 1 else 'model'} from {info_file}: "
                   f"{' + '.join(m.folder.name for m in models)}")
    return models


def postprocessing_for(models: list[TrainedModel]) -> dict | None:
    return load_postprocessing(models[0].folder if len(models) == 1 else ensemble_folder(models))

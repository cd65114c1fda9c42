"""Trainer lookup: built-ins, the ``smitunet.trainers`` entry-point group, or ``package.module:ClassName``.

Unlike a name scan over every module of a package, a lookup imports only what it needs: listing names reads
entry-point metadata without importing anything, and only the requested plug-in is loaded. A plug-in whose
import fails therefore never hides or breaks another one.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from smitunet.errors import SmitunetError

ENTRY_POINT_GROUP = "smitunet.trainers"

# Built-ins as "module:Class" strings so the registry imports no trainer code until one is asked for.
BUILTIN_TRAINERS = {
    "SMITTrainer": "smitunet.training.trainer:SMITTrainer",
    "ConvUNetTrainer": "smitunet.training.trainer:ConvUNetTrainer",
    "SMITSemiSupervisedTrainer": "smitunet.training.semi_supervised:SMITSemiSupervisedTrainer",
}
DEFAULT_TRAINER = "SMITTrainer"


def _plugin_entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_trainers() -> list[str]:
    """Names accepted by ``-tr``: built-ins first, then installed plug-ins (nothing is imported)."""
    plugins = sorted(name for name in _plugin_entry_points() if name not in BUILTIN_TRAINERS)
    return list(BUILTIN_TRAINERS) + plugins


def _import_target(target: str, what: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SmitunetError(f"trainer {what}: expected 'package.module:ClassName', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a plug-in's own broken import must surface as one actionable line
        raise SmitunetError(f"trainer {what}: cannot import module {module_name!r} "
                            f"({type(exc).__name__}: {exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SmitunetError(f"trainer {what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _check_trainer_class(cls, what: str):
    from smitunet.training.trainer import Trainer  # deferred: keeps listing names import-free

    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise SmitunetError(f"trainer {what}: {cls!r} is not a subclass of smitunet.training.trainer.Trainer")
    return cls


def get_trainer_class(name: str):
    """Resolve ``name`` (built-in, entry point or ``module:Class``) to a Trainer subclass."""
    if name in BUILTIN_TRAINERS:
        return _check_trainer_class(_import_target(BUILTIN_TRAINERS[name], name), name)
    if ":" in name:
        return _check_trainer_class(_import_target(name, name), name)
    eps = _plugin_entry_points()
    if name in eps:
        try:
            cls = eps[name].load()
        except Exception as exc:
            raise SmitunetError(f"trainer {name}: plug-in entry point {eps[name].value!r} failed to load "
                                f"({type(exc).__name__}: {exc})") from None
        return _check_trainer_class(cls, name)
    raise SmitunetError(f"unknown trainer {name!r}; available: {', '.join(available_trainers())} "
                        "(or give 'package.module:ClassName')")


def trainer_name_for_folder(name: str) -> str:
    """The folder name part for a trainer: ``pkg.mod:MyTrainer`` trains into ``MyTrainer__...``."""
    return name.rpartition(":")[2].rpartition(".")[2] if ":" in name else name

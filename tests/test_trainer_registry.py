"""Trainer lookup: built-ins, entry points (group smitunet.trainers), package.module:ClassName, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from smitunet.errors import SmitunetError
from smitunet.training import registry
from smitunet.training.trainer import ConvUNetTrainer, SMITTrainer, Trainer
from support.plugins import install_example_plugin

EXAMPLE = Path(__file__).parent / "plugin_trainer_example"


@pytest.fixture
def example_plugin(tmp_path, monkeypatch):
    install_example_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m.startswith("smitunet_example_trainers")]:
        del sys.modules[name]


def test_builtins_resolve_and_are_trainers():
    assert registry.get_trainer_class("SMITTrainer") is SMITTrainer
    assert registry.get_trainer_class("ConvUNetTrainer") is ConvUNetTrainer
    assert registry.available_trainers()[:2] == ["SMITTrainer", "ConvUNetTrainer"]


def test_unknown_name_lists_available():
    with pytest.raises(SmitunetError, match=r"unknown trainer 'NoSuchTrainer'; available: SMITTrainer, ConvUNetTrainer"):
        registry.get_trainer_class("NoSuchTrainer")


def test_module_class_reference(example_plugin):
    cls = registry.get_trainer_class("smitunet_example_trainers.trainers:NoAugmentationTrainer")
    assert issubclass(cls, SMITTrainer) and cls.__name__ == "NoAugmentationTrainer"
    assert registry.trainer_name_for_folder("smitunet_example_trainers.trainers:NoAugmentationTrainer") \
        == "NoAugmentationTrainer"


def test_entry_point_plugin_found_and_broken_plugin_isolated(example_plugin):
    names = registry.available_trainers()
    assert "ExampleTrainer" in names and "BrokenTrainer" in names  # listing imports nothing
    assert registry.get_trainer_class("ExampleTrainer").__name__ == "ExampleTrainer"
    with pytest.raises(SmitunetError, match=r"trainer BrokenTrainer: plug-in entry point .*failed to load "
                                            r"\(ModuleNotFoundError: .*smitunet_example_missing_dependency"):
        registry.get_trainer_class("BrokenTrainer")
    # ... and the broken one did not spoil the others
    assert registry.get_trainer_class("ExampleTrainer").__name__ == "ExampleTrainer"
    assert registry.get_trainer_class("SMITTrainer") is SMITTrainer


def test_bad_module_class_references():
    with pytest.raises(SmitunetError, match="cannot import module 'no_such_module_xyz'"):
        registry.get_trainer_class("no_such_module_xyz:Trainer")
    with pytest.raises(SmitunetError, match="has no attribute 'Nope'"):
        registry.get_trainer_class("smitunet.training.trainer:Nope")
    with pytest.raises(SmitunetError, match="is not a subclass of smitunet.training.trainer.Trainer"):
        registry.get_trainer_class("smitunet.training.losses:DiceCELoss")


def test_no_module_scanning_imports():
    """Looking up a built-in must not import every module of a package (nnU-Net's recursive scan)."""
    before = set(sys.modules)
    registry.get_trainer_class("SMITTrainer")
    new = {m for m in set(sys.modules) - before if m.startswith("smitunet.")}
    assert not any(m.startswith(("smitunet.pretraining", "smitunet.evaluation")) for m in new), new
    assert issubclass(SMITTrainer, Trainer)

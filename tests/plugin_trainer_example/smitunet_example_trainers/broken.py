"""A plug-in whose optional dependency is missing: importing it fails, which must not affect other trainers."""

import smitunet_example_missing_dependency  # noqa: F401  (deliberately absent)

from smitunet.training.trainer import SMITTrainer


class BrokenTrainer(SMITTrainer):
    pass

"""``smitunet_train DATASET CONFIGURATION FOLD``: train one fold (also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smitunet.errors import cli_entry
from smitunet.plans import DEFAULT_PLANS_NAME
from smitunet.training.registry import DEFAULT_TRAINER
from smitunet.utils.precision import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_train", description="Train one cross-validation fold.")
    p.add_argument("dataset", help="dataset id or name, e.g. 4 or Dataset004_Hippocampus")
    p.add_argument("configuration", help="configuration of the plans, e.g. 3d_fullres")
    p.add_argument("fold", help="0-4, or 'all' to train on every case")
    p.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER,
                   help="trainer name (built-in or entry point 'smitunet.trainers') or package.module:ClassName")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME, help="plans name (default: %(default)s)")
    p.add_argument("--pretrained", type=Path, help="SMIT checkpoint to initialise the encoder from")
    p.add_argument("--accept_partial_pretrained", action="store_true",
                   help="load --pretrained even when fewer than 90 %% of the encoder's tensors match (the report "
                        "lists what stays at initialisation)")
    p.add_argument("--pretrained_branch", choices=("teacher", "student"), default="teacher",
                   help="encoder taken from a checkpoint that holds both (default %(default)s)")
    p.add_argument("--monai_merge_order", choices=("legacy", "merging", "mergingv2"), default=None,
                   help="patch-merging order a MONAI checkpoint was trained with (default: legacy for the "
                        "self-supervised model_swinvit.pt, merging for a SwinUNETR model)")
    p.add_argument("--labelled_cases", type=Path, metavar="FILE",
                   help="case names (one per line or a JSON list): the fold's other training cases are unlabelled; "
                        "their labels are never read for training (label-efficiency runs on a labelled dataset; "
                        "SMITSemiSupervisedTrainer learns from them)")
    p.add_argument("--c", dest="continue_training", action="store_true",
                   help="continue from the latest checkpoint (also extends a finished run when --epochs is larger)")
    p.add_argument("--val", dest="validation_only", action="store_true",
                   help="only run the fold validation with checkpoint_final")
    p.add_argument("--npz", action="store_true", help="also save softmax probabilities of the validation cases")
    p.add_argument("--disable_tta", action="store_true",
                   help="fold validation without test-time mirroring (8x fewer forward passes; for CPU runs)")
    p.add_argument("--compile", action="store_true",
                   help="run the training step's forward through torch.compile (CUDA graphs on a GPU); falls back "
                        "to eager with one warning if compilation fails. Off by default: see the README for the "
                        "measured CPU effect")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast of the training steps; the weights stay fp32. auto: fp16 on CUDA, fp32 on the "
                        "CPU; fp16 applies on CUDA only. bf16 on the CPU needs AVX512-bf16 or AMX (elsewhere: an "
                        "error); measured speed and loss curves in the README (On a CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the trainer's)")
    p.add_argument("--iters_per_epoch", type=int, help="training iterations per epoch (default: the trainer's)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="background augmentation processes per training process; 0 = in process (default: 2 on "
                        "CPU, one per spare core up to 12 on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    return p


def trainer_settings(args) -> dict:
    """The typed settings of ``build_trainer`` / ``smitunet.api.train`` from the parsed arguments."""
    return dict(trainer=args.trainer, plans=args.plans, device=args.device, epochs=args.epochs,
                iters_per_epoch=args.iters_per_epoch, num_workers=args.num_workers, seed=args.seed,
                pretrained=args.pretrained, accept_partial_pretrained=args.accept_partial_pretrained,
                pretrained_branch=args.pretrained_branch, monai_merge_order=args.monai_merge_order,
                labelled_cases=args.labelled_cases,
                export_probabilities=args.npz, disable_tta=args.disable_tta, compile=args.compile,
                precision=args.precision)


def make_trainer(args):
    from smitunet.training.build import build_trainer

    return build_trainer(args.dataset, args.configuration, args.fold, **trainer_settings(args))


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from smitunet import api

    args = build_parser().parse_args(argv)
    api.train(args.dataset, args.configuration, args.fold, continue_training=args.continue_training,
              validation_only=args.validation_only, **trainer_settings(args))


if __name__ == "__main__":
    main()

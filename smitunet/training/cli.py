"""``smitunet_train DATASET CONFIGURATION FOLD``: train one fold (also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smitunet.errors import SmitunetError, cli_entry
from smitunet.paths import preprocessed_dir, resolve_dataset_name, training_output_dir
from smitunet.plans import DEFAULT_PLANS_NAME, Plans
from smitunet.training.distributed import init_distributed, shutdown_distributed
from smitunet.training.registry import DEFAULT_TRAINER, get_trainer_class, trainer_name_for_folder
from smitunet.training.trainer import TrainingContext, TrainingOptions
from smitunet.utils.device import default_num_workers, process_device, resolve_device
from smitunet.utils.files import load_json


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
    p.add_argument("--c", dest="continue_training", action="store_true",
                   help="continue from the latest checkpoint (also extends a finished run when --epochs is larger)")
    p.add_argument("--val", dest="validation_only", action="store_true",
                   help="only run the fold validation with checkpoint_final")
    p.add_argument("--npz", action="store_true", help="also save softmax probabilities of the validation cases")
    p.add_argument("--disable_tta", action="store_true",
                   help="fold validation without test-time mirroring (8x fewer forward passes; for CPU runs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the trainer's)")
    p.add_argument("--iters_per_epoch", type=int, help="training iterations per epoch (default: the trainer's)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="background augmentation processes per training process; 0 = in process (default: 2 on "
                        "CPU, one per spare core up to 12 on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _fold(text: str) -> str | int:
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise SmitunetError(f"fold must be 0-4 or 'all', got {text!r}")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SmitunetError(f"{name} must be at least 1, got {value}")


def make_trainer(args):
    fold = _fold(args.fold)
    for name in ("epochs", "iters_per_epoch"):
        _positive(f"--{name}", getattr(args, name))
    if args.num_workers is not None and args.num_workers < 0:
        raise SmitunetError(f"--num_workers must be 0 or more, got {args.num_workers}")
    if args.pretrained is not None and not args.pretrained.is_file():
        raise SmitunetError(f"{args.pretrained}: pretrained checkpoint not found")
    trainer_class = get_trainer_class(args.trainer)
    dataset_name = resolve_dataset_name(args.dataset, search=("preprocessed",))
    dataset_dir = preprocessed_dir() / dataset_name
    plans = Plans.load(dataset_dir / f"{args.plans}.json")
    if not (dataset_dir / "dataset.json").is_file():
        raise SmitunetError(f"{dataset_dir / 'dataset.json'}: missing; re-run smitunet_plan_and_preprocess")
    plans.configuration(args.configuration)  # unknown configuration: one line listing the available ones
    device = resolve_device(args.device)
    dist_ctx = init_distributed(device.type)
    device = process_device(device, dist_ctx.enabled, dist_ctx.local_rank)
    folder_name = trainer_name_for_folder(args.trainer)
    workers = args.num_workers if args.num_workers is not None else default_num_workers(device.type, dist_ctx.world_size)
    options = TrainingOptions(epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, num_workers=workers,
                              seed=args.seed, pretrained=args.pretrained,
                              accept_partial_pretrained=args.accept_partial_pretrained,
                              pretrained_branch=args.pretrained_branch, export_probabilities=args.npz,
                              disable_tta=args.disable_tta)
    ctx = TrainingContext(
        plans=plans, configuration=args.configuration, fold=fold, dataset_json=load_json(dataset_dir / "dataset.json"),
        preprocessed_dataset_dir=dataset_dir,
        output_dir=training_output_dir(dataset_name, folder_name, args.plans, args.configuration) / f"fold_{fold}",
        trainer_name=args.trainer, device=device, dist=dist_ctx, options=options)
    return trainer_class(ctx)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    trainer = make_trainer(args)
    try:
        trainer.run(continue_training=args.continue_training, validation_only=args.validation_only)
    finally:
        shutdown_distributed(trainer.ctx.dist)


if __name__ == "__main__":
    main()

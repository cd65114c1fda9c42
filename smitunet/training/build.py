"""Build the trainer of one fold from typed settings (the CLI and ``smitunet.api.train`` call this)."""

from __future__ import annotations

from pathlib import Path

from smitunet.errors import SmitunetError
from smitunet.paths import preprocessed_dir, resolve_dataset_name, training_output_dir
from smitunet.plans import DEFAULT_PLANS_NAME, Plans
from smitunet.training.registry import DEFAULT_TRAINER, get_trainer_class, trainer_name_for_folder
from smitunet.training.trainer import Trainer, TrainingContext, TrainingOptions
from smitunet.utils.device import default_num_workers, process_device, resolve_device
from smitunet.utils.distributed import init_distributed
from smitunet.utils.files import load_json
from smitunet.utils.precision import autocast_dtype


def parse_fold(text: str | int) -> str | int:
    text = str(text)
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise SmitunetError(f"fold must be 0-4 or 'all', got {text!r}")


def read_case_list(cases: str | Path | list[str] | None) -> list[str] | None:
    """A list of case names, or a file of them (one per line, or a JSON list)."""
    if cases is None or isinstance(cases, list):
        return cases
    path = Path(cases)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SmitunetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if text.lstrip().startswith("["):
        import json

        try:
            names = json.loads(text)
        except ValueError as exc:
            raise SmitunetError(f"{path}: not a valid JSON list of case names ({exc})") from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SmitunetError(f"{path}: expected case names, one per line or as a JSON list")
    return names


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SmitunetError(f"{name} must be at least 1, got {value}")


def build_trainer(dataset: str | int, configuration: str, fold: str | int, *, trainer: str = DEFAULT_TRAINER,
                  plans: str = DEFAULT_PLANS_NAME, device: str = "auto", epochs: int | None = None,
                  iters_per_epoch: int | None = None, num_workers: int | None = None, seed: int = 0,
                  pretrained: str | Path | None = None, accept_partial_pretrained: bool = False,
                  pretrained_branch: str = "teacher", monai_merge_order: str | None = None,
                  labelled_cases: str | Path | list[str] | None = None, export_probabilities: bool = False,
                  disable_tta: bool = False, compile: bool = False, precision: str = "auto") -> Trainer:
    """The trainer (class resolved by name, plans loaded and checked, distributed set up) of one fold."""
    fold = parse_fold(fold)
    _positive("--epochs", epochs)
    _positive("--iters_per_epoch", iters_per_epoch)
    if num_workers is not None and num_workers < 0:
        raise SmitunetError(f"--num_workers must be 0 or more, got {num_workers}")
    pretrained = Path(pretrained) if pretrained is not None else None
    if pretrained is not None and not pretrained.is_file():
        raise SmitunetError(f"{pretrained}: pretrained checkpoint not found")
    trainer_class = get_trainer_class(trainer)
    dataset_name = resolve_dataset_name(dataset, search=("preprocessed",))
    dataset_dir = preprocessed_dir() / dataset_name
    plans_obj = Plans.load(dataset_dir / f"{plans}.json")
    if not (dataset_dir / "dataset.json").is_file():
        raise SmitunetError(f"{dataset_dir / 'dataset.json'}: missing; re-run smitunet_plan_and_preprocess")
    plans_obj.configuration(configuration)  # unknown configuration: one line listing the available ones
    torch_device = resolve_device(device)
    dist_ctx = init_distributed(torch_device.type)
    torch_device = process_device(torch_device, dist_ctx.enabled, dist_ctx.local_rank)
    autocast_dtype(precision, torch_device)  # an unusable --precision stops before any output
    workers = num_workers if num_workers is not None else default_num_workers(torch_device.type, dist_ctx.world_size)
    options = TrainingOptions(epochs=epochs, iters_per_epoch=iters_per_epoch, num_workers=workers, seed=seed,
                              pretrained=pretrained, accept_partial_pretrained=accept_partial_pretrained,
                              pretrained_branch=pretrained_branch, monai_merge_order=monai_merge_order,
                              labelled_cases=read_case_list(labelled_cases),
                              export_probabilities=export_probabilities,
                              disable_tta=disable_tta, compile=bool(compile), precision=precision)
    folder = training_output_dir(dataset_name, trainer_name_for_folder(trainer), plans, configuration) / f"fold_{fold}"
    ctx = TrainingContext(plans=plans_obj, configuration=configuration, fold=fold,
                          dataset_json=load_json(dataset_dir / "dataset.json"), preprocessed_dataset_dir=dataset_dir,
                          output_dir=folder, trainer_name=trainer, device=torch_device, dist=dist_ctx, options=options)
    return trainer_class(ctx)

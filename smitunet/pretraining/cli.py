"""``smitunet_pretrain``: self-supervised SMIT pretraining of the Swin encoder on unlabelled images (also under
torchrun). Writes ``smit.pt`` for ``smitunet_train --pretrained``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from smitunet.errors import CasesFailedError, SmitunetError, cli_entry
from smitunet.networks.registry import get_preset, is_swin
from smitunet.plans import NetworkConfig, Plans
from smitunet.pretraining.config import METHODS, PretrainSettings
from smitunet.pretraining.data import (PRETRAIN_CONFIGURATION, check_sources, collect_sources, derived_plans,
                                      preprocess_sources)
from smitunet.pretraining.trainer import PretrainingRun, RunOptions
from smitunet.utils.distributed import barrier, init_distributed, shutdown_distributed
from smitunet.utils.device import default_num_workers, process_device, resolve_device
from smitunet.utils.log import logger
from smitunet.utils.precision import autocast_dtype


def build_parser() -> argparse.ArgumentParser:
    d = PretrainSettings()
    p = argparse.ArgumentParser(prog="smitunet_pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, required=True, help="output checkpoint, e.g. smit.pt")
    p.add_argument("-d", nargs="+", default=[], metavar="DATASET", help="raw dataset ids/names (labels ignored)")
    p.add_argument("-i", nargs="+", default=[], type=Path, metavar="FOLDER",
                   help="folders of images (any SimpleITK format) and/or DICOM series sub-folders")
    p.add_argument("--modality", default="MRI",
                   help="channel name of -i images: CT (clip + scale) or anything else (z-score) (default %(default)s)")
    p.add_argument("--plans", type=Path, help="fine-tuning plans JSON: use its spacing, normalisation, network "
                   "strides and patch, so pretraining preprocesses exactly as fine-tuning does")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="configuration of --plans (default %(default)s)")
    p.add_argument("--preset", default=None, help="network preset (default: the plans', else smit_small)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="crop size (default: plans', else 96^3)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="target spacing in mm (default: plans', else the images' median)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--iters_per_epoch", type=int, default=250)
    p.add_argument("--batch_size", type=int, default=2, help="samples per step and process (two views each)")
    p.add_argument("--method", choices=METHODS, default="smit")
    p.add_argument("--mask_ratio", type=float, default=d.mask_ratio)
    p.add_argument("--block_size", type=int, nargs=3, default=d.block_voxels, metavar=("Z", "Y", "X"),
                   help="mask block size in voxels (default %(default)s)")
    p.add_argument("--teacher_drop_rate", type=float, default=d.teacher_drop_rate, help="SMART patch dropout rate")
    smart = p.add_argument_group("SMART (--method smart)")
    smart.add_argument("--smart_class_attention", choices=("on", "off"), default=on_off(d.smart_class_attention),
                       help="class attention guides the student's mask and its class tokens are co-distilled; off = "
                            "only the noisy teacher, with block masks (default %(default)s)")
    smart.add_argument("--class_tokens", type=int, default=d.class_tokens, help="class tokens (default %(default)s)")
    smart.add_argument("--class_attention_depth", type=int, default=d.class_attention_depth,
                       help="class-attention blocks (default %(default)s)")
    smart.add_argument("--attention_mask_share", type=float, default=d.attention_mask_share,
                       help="share of the masked tokens that are the teacher's most attended ones, the rest random "
                            "(default %(default)s)")
    smart.add_argument("--class_weight", type=float, default=d.weight_class,
                       help="weight of the class-token co-distillation (default %(default)s)")
    gmim = p.add_argument_group("GMIM (--method gmim)")
    gmim.add_argument("--gmim_siamese", choices=("on", "off"), default=on_off(d.gmim_siamese),
                      help="Siamese target branch with the cross-correlation loss and MSE reconstruction; off = GMIM's "
                           "masking with SMIT's distillation losses (default %(default)s)")
    gmim.add_argument("--projection_dim", type=int, default=d.projection_dim,
                      help="projection width of the cross-correlation (default %(default)s)")
    gmim.add_argument("--correlation_lambda", "--lambd", type=float, default=d.correlation_lambda,
                      help="weight of the off-diagonal terms in the cross-correlation loss (default %(default)s)")
    gmim.add_argument("--correlation_weight", type=float, default=d.weight_correlation,
                      help="weight of the cross-correlation loss beside the reconstruction (default %(default)s)")
    p.add_argument("--loss_weights", type=float, nargs=3, metavar=("REC", "PATCH", "GLOBAL"),
                   default=[d.weight_reconstruction, d.weight_patch, d.weight_global])
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--teacher_momentum", type=float, default=d.momentum_base,
                   help="EMA momentum at the start; a cosine takes it to 1 over the whole run (default %(default)s)")
    p.add_argument("--teacher_temperature", type=float, default=d.teacher_temperature,
                   help=f"teacher temperature after a warm-up from {d.warmup_teacher_temperature} (default %(default)s)")
    p.add_argument("--c", dest="continue_training", action="store_true",
                   help="continue from the state file beside --output (also extends a run when --epochs is larger)")
    p.add_argument("--export_official", type=Path, help="also write the flat official SMIT state_dict here")
    p.add_argument("--export_weights", choices=("teacher", "student"), default="teacher")
    p.add_argument("--cache", type=Path, help="folder to keep preprocessed images in (memory-mapped and reused: large archives need "
                   "not fit in RAM); without it they are held in memory")
    p.add_argument("--num_workers", type=int, default=None,
                   help="background processes preparing the next steps' views and masks; 0 = in process (default: 2 "
                        "on CPU, one per spare core up to 12 on CUDA)")
    p.add_argument("--strict", action="store_true",
                   help="check every image first and stop before training if one is bad (default: each bad image is "
                        "one line and left out, the run goes on, and the exit code is non-zero at the end)")
    p.add_argument("--compile", action="store_true",
                   help="run the student's and teacher's forwards through torch.compile (CUDA graphs on a GPU); "
                        "falls back to eager with one warning if compilation fails")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="autocast of the student's and teacher's forwards and the losses; the weights stay fp32. "
                        "auto is fp32; bf16 on the CPU needs AVX512-bf16 or AMX (elsewhere: an error)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def settings_from_args(args) -> PretrainSettings:
    s = PretrainSettings(method=args.method, mask_ratio=args.mask_ratio, block_voxels=list(args.block_size),
                         teacher_drop_rate=args.teacher_drop_rate, lr=args.lr,
                         momentum_base=args.teacher_momentum, teacher_temperature=args.teacher_temperature,
                         smart_class_attention=args.smart_class_attention == "on", class_tokens=args.class_tokens,
                         class_attention_depth=args.class_attention_depth,
                         attention_mask_share=args.attention_mask_share, weight_class=args.class_weight,
                         gmim_siamese=args.gmim_siamese == "on", projection_dim=args.projection_dim,
                         correlation_lambda=args.correlation_lambda, weight_correlation=args.correlation_weight)
    s.weight_reconstruction, s.weight_patch, s.weight_global = args.loss_weights
    s.validate()
    return s


def _network_from_plans(args, plans: Plans) -> tuple[str, list[int], dict]:
    cfg = plans.configuration(args.configuration)
    name = args.preset or cfg.network.name
    if not is_swin(name):
        raise SmitunetError(f"{args.plans}: network {cfg.network.name} has no SMIT encoder; pretraining needs a "
                            "Swin preset (smit_tiny, smit_small, smit_base, swinunetr_ssl)")
    kw = cfg.network.kwargs
    keep = {k: kw[k] for k in get_preset(name) if k in kw and k != "deep_supervision"}
    patch = list(args.patch) if args.patch else list(cfg.patch_size)
    overrides = {**keep, "num_stages": kw["num_stages"], "strides": kw["strides"]} if not args.patch else keep
    return name, patch, overrides


def prepare(args):
    """(plans, configuration, preset, patch, network overrides) for the run."""
    for name in ("epochs", "iters_per_epoch", "batch_size"):
        if getattr(args, name) < 1:
            raise SmitunetError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.num_workers is not None and args.num_workers < 0:
        raise SmitunetError(f"--num_workers must not be negative, got {args.num_workers}")
    if args.plans is not None:
        plans = Plans.load(args.plans)
        preset, patch, overrides = _network_from_plans(args, plans)
        if args.spacing:  # plans are frozen: a copy whose configuration has the asked spacing
            cfg = dataclasses.replace(plans.configuration(args.configuration), spacing=list(args.spacing))
            plans = dataclasses.replace(plans, configurations={**plans.configurations, args.configuration: cfg})
        return plans, args.configuration, preset, patch, overrides
    preset = args.preset or "smit_small"
    if not is_swin(preset):
        raise SmitunetError(f"--preset {preset}: pretraining needs a Swin preset with the SMIT encoder")
    patch = list(args.patch or [96, 96, 96])
    return None, PRETRAIN_CONFIGURATION, preset, patch, {}


@cli_entry
def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """The pretraining the parsed flags ask for (``smitunet.api.pretrain`` builds them from keyword arguments)."""
    settings = settings_from_args(args)
    plans, configuration, preset, patch, overrides = prepare(args)
    sources, channel_names = collect_sources(args.d, args.i, args.modality)
    if plans is not None and len(channel_names) != plans.num_channels:
        raise SmitunetError(f"{args.plans}: plans have {plans.num_channels} channel(s), the images {len(channel_names)}")
    if args.strict and (bad := check_sources(sources)):
        raise SmitunetError(f"--strict: {len(bad)} of {len(sources)} image(s) failed the checks, nothing was "
                            f"trained: {', '.join(sorted(bad))}")
    if plans is None:
        network = NetworkConfig(preset, {"patch_size": patch})
        plans = derived_plans(sources, channel_names, args.spacing, network, seed=args.seed)
    device = resolve_device(args.device)
    dist_ctx = init_distributed(device.type)
    device = process_device(device, dist_ctx.enabled, dist_ctx.local_rank)
    if args.precision == "bf16":
        autocast_dtype(args.precision, device)  # an unusable bf16 stops before images are read
    workers = args.num_workers if args.num_workers is not None else default_num_workers(device.type, dist_ctx.world_size)
    try:
        failed: dict[str, str] = {}
        volumes = preprocess_sources(sources, plans, configuration, args.cache, show_progress=dist_ctx.is_main,
                                     failed=failed)
        cfg = plans.configuration(configuration)
        options = RunOptions(
            output=args.output, preset=preset, patch=patch, network_overrides=overrides, epochs=args.epochs,
            iters_per_epoch=args.iters_per_epoch, batch_size=args.batch_size, seed=args.seed, device=device,
            export_official=args.export_official, export_weights=args.export_weights,
            num_workers=workers, compile=args.compile, precision=args.precision,
            data_meta={"spacing": list(cfg.spacing), "normalization": list(cfg.normalization),
                       "channel_names": dict(plans.channel_names), "num_images": len(volumes)})
        if dist_ctx.is_main:
            logger.info(f"pretraining {preset} ({settings.method}) on {len(volumes)} images, patch {patch}, "
                        f"spacing {cfg.spacing}, {args.epochs} x {args.iters_per_epoch} steps -> {args.output}")
        PretrainingRun(options, settings, volumes, len(channel_names), dist_ctx).run(args.continue_training)
        barrier(dist_ctx)
        if failed:
            raise CasesFailedError(f"{len(failed)} image(s) failed the checks and were left out: "
                                   f"{', '.join(sorted(failed))} (pretrained on {len(volumes)} -> {args.output})", failed)
    finally:
        shutdown_distributed(dist_ctx)


if __name__ == "__main__":
    main()

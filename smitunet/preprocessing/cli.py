"""``smitunet_plan_and_preprocess``: integrity check, fingerprint, plans and preprocessed data for datasets.

Nothing is written under ``smitunet_preprocessed`` for a dataset until all of its checks have passed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smitunet.errors import cli_entry
from smitunet.plans import DEFAULT_PLANS_NAME
from smitunet.preprocessing.planner import DEFAULT_GPU_MEMORY_GB, DEFAULT_PRESET


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_plan_and_preprocess", description=__doc__.splitlines()[0])
    p.add_argument("-d", nargs="+", required=True, metavar="ID",
                   help="dataset id(s): 4, 004 or Dataset004_Hippocampus")
    p.add_argument("-pl", "--plans_name", default=DEFAULT_PLANS_NAME, help="plans file name (default %(default)s)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="network preset to plan for (default %(default)s; "
                   "smit_tiny for CPU)")
    p.add_argument("--gpu_memory_target", type=float, default=DEFAULT_GPU_MEMORY_GB,
                   help="GPU memory budget in GB for patch and batch size (default %(default)s)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="target spacing of 3d_fullres in mm, instead of the planned one (nnU-Net's "
                        "-overwrite_target_spacing); recorded in the plans")
    p.add_argument("--pretrained", type=Path, metavar="CKPT",
                   help="plan the network a pretrained checkpoint fits: embed dim, depths, heads and window from "
                        "it (official SMIT, MONAI SwinUNETR or smitunet_pretrain output, which also sets spacing, "
                        "normalisation and patch), keeping every Swin stage it holds where the data allows")
    p.add_argument("--decoder", choices=("res", "light"), default=None,
                   help="Swin U-Net decoder: res (residual blocks on the input and on every encoder feature, the "
                        "default) or light (1x1 projections: the encoder carries the representation; faster)")
    p.add_argument("--monai_merge_order", choices=("legacy", "merging", "mergingv2"), default=None,
                   help="with --pretrained: the patch-merging order a MONAI checkpoint was trained with (default: "
                        "legacy for the self-supervised model_swinvit.pt, merging for a SwinUNETR model)")
    p.add_argument("-c", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to preprocess (default: all planned, 3d_fullres [+ 3d_lowres and "
                        "3d_cascade_fullres, which reads the data of 3d_fullres])")
    p.add_argument("-np", type=int, default=None, help="worker processes (default: available cores)")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="also re-check reused fingerprints and check imagesTs")
    p.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("--use_existing_plans", action="store_true",
                   help="preprocess with the existing (possibly hand-edited) plans file instead of re-planning")
    p.add_argument("--clean", action="store_true", help="recompute the fingerprint and every case")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from smitunet import api

    args = build_parser().parse_args(argv)
    api.plan_and_preprocess(args.d, plans_name=args.plans_name, preset=args.preset,
                            gpu_memory_target=args.gpu_memory_target, configurations=args.c, num_processes=args.np,
                            verify_dataset_integrity=args.verify_dataset_integrity, preprocess=not args.no_pp,
                            use_existing_plans=args.use_existing_plans, clean=args.clean, spacing=args.spacing,
                            pretrained=args.pretrained, monai_merge_order=args.monai_merge_order,
                            decoder=args.decoder)


if __name__ == "__main__":
    main()

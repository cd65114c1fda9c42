"""``smitunet_evaluate GT_DIR PRED_DIR [-l LABELS]``: Dice, IoU, HD95 and NSD per case and label -> summary.json."""

from __future__ import annotations

import argparse

from smitunet.errors import SmitunetError, cli_entry


def parse_label(text: str) -> int | tuple[int, ...]:
    """``2`` is one label; ``1,2`` is the region made of labels 1 and 2."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SmitunetError(f"label {text!r} is not an integer or a comma-separated list of integers") from None
    return values[0] if len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_evaluate", description=__doc__)
    p.add_argument("gt_dir", help="folder of reference label files ({case}.nii.gz, ...)")
    p.add_argument("pred_dir", help="folder of predicted label files with the same case names")
    p.add_argument("-l", "--labels", nargs="+", default=None,
                   help="labels to evaluate (a,b for a region); default: every nonzero label found")
    p.add_argument("-il", "--ignore_label", type=int, default=None,
                   help="reference value of unannotated voxels (dataset.json's 'ignore'): left out of every metric")
    p.add_argument("-o", "--output_file", default=None, help="summary file (default PRED_DIR/summary.json)")
    p.add_argument("--nsd_tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1.0)")
    p.add_argument("-np", "--num_processes", type=int, default=1)
    p.add_argument("--subset", action="store_true",
                   help="evaluate only the predicted cases instead of failing on missing predictions")
    return p


def _print_table(summary: dict) -> None:
    print(f"{'label':>8} {'Dice':>8} {'IoU':>8} {'HD95 mm':>9} {'NSD':>8}")
    for label, m in summary["mean"].items():
        print(f"{label:>8} {m['dice']:8.4f} {m['iou']:8.4f} {m['hd95']:9.3f} {m['nsd']:8.4f}")
    fg = summary["foreground_mean"]
    print(f"{'mean':>8} {fg['dice']:8.4f} {fg['iou']:8.4f} {fg['hd95']:9.3f} {fg['nsd']:8.4f}"
          f"   ({summary['num_cases']} cases)")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    labels = [parse_label(t) for t in args.labels] if args.labels else None
    from smitunet import api

    summary = api.evaluate(args.gt_dir, args.pred_dir, labels=labels, output_file=args.output_file,
                           nsd_tolerance_mm=args.nsd_tolerance, num_processes=args.num_processes,
                           allow_subset=args.subset, ignore_label=args.ignore_label)
    _print_table(summary)


if __name__ == "__main__":
    main()

"""``smitunet_export -d ID -c CONFIG -f FOLDS -o DIR --format onnx|torchscript``: a trained model's networks as ONNX
or TorchScript in a self-contained folder (plans, dataset.json, postprocessing), for ``smitunet_predict -m DIR``
or your own runtime. Each fold's export is checked against the PyTorch network on a test patch (ONNX: when
onnxruntime is installed). Nothing is written unless every fold exports.
"""

from __future__ import annotations

import argparse

from smitunet.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to export (default: all trained)")
    p.add_argument("-o", "--output", required=True, help="a new (or empty) folder for the export")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (needs the 'onnx' extra) or torchscript")
    p.add_argument("-tr", "--trainer", default=None, help="trainer (needed when several are trained)")
    p.add_argument("-p", "--plans", default=None, help="plans name (needed when several are trained)")
    p.add_argument("-chk", "--checkpoint", choices=("final", "best"), default="final")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from smitunet import api

    args = build_parser().parse_args(argv)
    folder = api.export(args.dataset, args.configuration, args.folds, args.output, format=args.format,
                        trainer=args.trainer, plans=args.plans, checkpoint=args.checkpoint)
    print(f"exported to {folder} ({args.format}); predict with: smitunet_predict -i IN -o OUT -m {folder}")


if __name__ == "__main__":
    main()

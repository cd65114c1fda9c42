"""``smitunet_predict -i IN -o OUT``: segment raw-named files, plain files or DICOM series with a trained model.

Ensembles: give several values to -c / -tr / -p (e.g. ``-c 3d_fullres 3d_lowres`` or ``-tr A B``; an option
with one value is shared by all models) and the models' probabilities are averaged with equal weight. With only
-d and several trained models, the choice of smitunet_find_best_configuration (inference_information.json) is
used, an ensemble included (``--disable_ensemble``: its best single model).

Cascade (``-c 3d_cascade_fullres``): the 3d_lowres model of the same trainer, plans and folds runs first, or
``-prev_stage_predictions DIR`` gives its segmentations (as nnU-Net).

Exported models (smitunet_export): ``-m DIR`` predicts with the folder's ONNX or TorchScript networks instead of the
checkpoints (``--backend onnxruntime|torchscript``, default: what the folder holds), with the same sliding window,
mirroring and fold averaging.
"""

from __future__ import annotations

import argparse
import time

from smitunet.errors import cli_entry
from smitunet.inference.predictor import PredictionOptions
from smitunet.utils.precision import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smitunet_predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True,
                   help="folder of {case}_0000.nii.gz files, of plain image files, of DICOM series folders, "
                        "or one DICOM series folder / one image file")
    p.add_argument("-o", "--output", required=True, help="output folder (label files in the input's format)")
    p.add_argument("-d", "--dataset", default=None, help="dataset id or name (optional if one model is trained)")
    p.add_argument("-c", "--configuration", nargs="+", default=None,
                   help="configuration; several values: ensemble of those models")
    p.add_argument("-tr", "--trainer", nargs="+", default=None, help="trainer; several values: ensemble")
    p.add_argument("-p", "--plans", nargs="+", default=None, help="plans name; several values: ensemble")
    p.add_argument("-m", "--model_folder", nargs="+", default=None,
                   help="exported model folder(s) from smitunet_export, instead of -d/-c/-tr/-p (several: ensemble)")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "torchscript"), default=None,
                   help="torch: the checkpoints (default without -m); onnxruntime / torchscript: an exported folder "
                        "(-m; default: its format). On a CPU ONNX Runtime is about as fast as PyTorch, not meaningfully "
                        "faster (benchmarks/results/store_onnx_*.md)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to ensemble (default: all trained), the same for every model")
    p.add_argument("--disable_ensemble", action="store_true",
                   help="with -d alone: use find_best_configuration's best single model, not its ensemble")
    p.add_argument("-prev_stage_predictions", "--prev_stage_predictions", default=None, metavar="DIR",
                   help="a cascade (3d_cascade_fullres): the previous stage's segmentations of the inputs, "
                        "{case}{ending} at the input geometry (e.g. smitunet_predict -c 3d_lowres output); default: "
                        "the 3d_lowres model of the same trainer, plans and folds runs first")
    p.add_argument("-chk", "--checkpoint", choices=("final", "best"), default="final")
    p.add_argument("--step_size", type=float, default=0.5, help="tile step as a fraction of the patch (0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    p.add_argument("--save_probabilities", action="store_true", help="also write {case}.npz (probabilities)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast of the forward passes: on CUDA auto is bf16 where supported, else fp16; on the "
                        "CPU auto is fp32, and bf16 needs an AVX512-bf16 or AMX CPU")
    p.add_argument("--compile", action="store_true",
                   help="run the network's forward through torch.compile (CUDA graphs on a GPU; the first case pays "
                        "the compile time); falls back to eager with one warning if compilation fails")
    p.add_argument("--tile_batch_size", type=int, default=None, help="tiles per forward pass (4 CUDA, 1 CPU)")
    p.add_argument("--continue_prediction", action="store_true", help="skip cases whose output already exists")
    p.add_argument("--num_parts", type=int, default=1, help="split the cases between this many workers")
    p.add_argument("--part_id", type=int, default=0, help="which part this worker predicts (0-based)")
    p.add_argument("-npp", "--num_processes", type=int, default=1,
                   help="background threads reading/preprocessing ahead and exporting behind (0: none)")
    p.add_argument("--dicom_output", nargs="+", choices=("rtstruct", "seg"), default=(),
                   help="also write {case}_rtstruct.dcm (one ROI per label) and/or {case}_seg.dcm (DICOM SEG) "
                        "referring to the input series; DICOM series input only (needs the 'dicom' extra)")
    p.add_argument("--strict", action="store_true",
                   help="check every input first and stop before writing anything if one is bad (default: each bad "
                        "case is one line and skipped, the others are predicted, and the exit code is non-zero)")
    p.add_argument("--disable_postprocessing", action="store_true",
                   help="ignore postprocessing.json from smitunet_find_best_configuration")
    return p


def options_from_args(args) -> PredictionOptions:
    return PredictionOptions(step_size=args.step_size, use_tta=not args.disable_tta, device=args.device,
                             precision=args.precision, tile_batch_size=args.tile_batch_size,
                             save_probabilities=args.save_probabilities,
                             continue_prediction=args.continue_prediction, num_parts=args.num_parts,
                             part_id=args.part_id, num_processes=args.num_processes,
                             apply_postprocessing=not args.disable_postprocessing, strict=args.strict,
                             dicom_output=tuple(dict.fromkeys(args.dicom_output)),
                             prev_stage_predictions=args.prev_stage_predictions, compile=args.compile)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from smitunet import api

    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    written = api.predict(args.input, args.output, dataset=args.dataset, configurations=args.configuration,
                          trainers=args.trainer, plans=args.plans, folds=args.folds, checkpoint=args.checkpoint,
                          disable_ensemble=args.disable_ensemble, options=options_from_args(args),
                          settings_extra=vars(args), model_folders=args.model_folder, backend=args.backend)
    print(f"predicted {len(written)} case(s) into {args.output} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

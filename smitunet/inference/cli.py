"""``smitunet_predict -i IN -o OUT``: segment raw-named files, plain files or DICOM series with a trained model.

Ensembles: give several values to -c / -tr / -p (e.g. ``-c 3d_fullres 3d_lowres`` or ``-tr A B``; an option
with one value is shared by all models) and the models' probabilities are averaged with equal weight. With only
-d and several trained models, the choice of smitunet_find_best_configuration (inference_information.json) is
used, an ensemble included (``--disable_ensemble``: its best single model).
"""

from __future__ import annotations

import argparse
import sys
import time

from smitunet.errors import SmitunetError, cli_entry
from smitunet.evaluation.postprocessing import load_postprocessing
from smitunet.inference.model_folder import (INFERENCE_INFORMATION_FILE, TrainedModel, ensemble_folder,
                                             find_trained_models, resolve_folds, select_model, select_models)
from smitunet.inference.predictor import PredictionOptions, Predictor
from smitunet.paths import results_dir
from smitunet.utils.files import load_json, save_json


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
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to ensemble (default: all trained), the same for every model")
    p.add_argument("--disable_ensemble", action="store_true",
                   help="with -d alone: use find_best_configuration's best single model, not its ensemble")
    p.add_argument("-chk", "--checkpoint", choices=("final", "best"), default="final")
    p.add_argument("--step_size", type=float, default=0.5, help="tile step as a fraction of the patch (0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    p.add_argument("--save_probabilities", action="store_true", help="also write {case}.npz (probabilities)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="autocast on CUDA (auto: bf16 where supported, else fp16); CPU always runs fp32")
    p.add_argument("--tile_batch_size", type=int, default=None, help="tiles per forward pass (4 CUDA, 1 CPU)")
    p.add_argument("--continue_prediction", action="store_true", help="skip cases whose output already exists")
    p.add_argument("--num_parts", type=int, default=1, help="split the cases between this many workers")
    p.add_argument("--part_id", type=int, default=0, help="which part this worker predicts (0-based)")
    p.add_argument("-npp", "--num_processes", type=int, default=1,
                   help="background threads reading/preprocessing ahead and exporting behind (0: none)")
    p.add_argument("--disable_postprocessing", action="store_true",
                   help="ignore postprocessing.json from smitunet_find_best_configuration")
    return p


def choose_models(args) -> list[TrainedModel]:
    """The requested model(s); when several match only -d, what smitunet_find_best_configuration picked."""
    if args.dataset is not None and not (args.configuration or args.trainer or args.plans):
        models = find_trained_models(args.dataset, args.checkpoint)
        info_file = results_dir() / models[0].dataset / INFERENCE_INFORMATION_FILE if models else None
        if len(models) > 1 and info_file.is_file():
            return models_from_information(args.dataset, info_file, args.checkpoint, args.disable_ensemble)
    return select_models(args.dataset, args.configuration, args.trainer, args.plans, args.checkpoint)


def models_from_information(dataset, info_file, checkpoint: str, disable_ensemble: bool) -> list[TrainedModel]:
    info = load_json(info_file)
    best = info.get("best_single", info["best"]) if disable_ensemble else info["best"]
    members = best.get("members") or [best]
    try:
        models = [select_model(dataset, m["configuration"], m["trainer"], m["plans"], checkpoint) for m in members]
    except (KeyError, TypeError):
        raise SmitunetError(f"{info_file}: not a valid inference information file; re-run "
                            "smitunet_find_best_configuration") from None
    print(f"using the best {'ensemble' if len(models) > 1 else 'model'} from {info_file}: "
          f"{' + '.join(m.folder.name for m in models)}", file=sys.stderr)
    return models


def postprocessing_for(models: list[TrainedModel]) -> dict | None:
    return load_postprocessing(models[0].folder if len(models) == 1 else ensemble_folder(models))


def options_from_args(args) -> PredictionOptions:
    return PredictionOptions(step_size=args.step_size, use_tta=not args.disable_tta, device=args.device,
                             precision=args.precision, tile_batch_size=args.tile_batch_size,
                             save_probabilities=args.save_probabilities,
                             continue_prediction=args.continue_prediction, num_parts=args.num_parts,
                             part_id=args.part_id, num_processes=args.num_processes,
                             apply_postprocessing=not args.disable_postprocessing)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    models = choose_models(args)
    folds = [resolve_folds(m, args.folds, args.checkpoint) for m in models]
    options = options_from_args(args)
    predictor = Predictor.from_model_folders([(m.folder, f) for m, f in zip(models, folds)], args.checkpoint,
                                             options, postprocessing_for(models))
    described = "; ".join(f"{m.identifier} folds {', '.join(f)}" for m, f in zip(models, folds))
    print(f"{'ensemble' if len(models) > 1 else 'model'} {described}, checkpoint_{args.checkpoint}, "
          f"device {predictor.device}, TTA {'on' if options.use_tta else 'off'}", file=sys.stderr)
    start = time.perf_counter()
    written = predictor.predict_folder(args.input, args.output)
    identifiers = [m.identifier for m in models]
    # The arguments first: the resolved folds (and model) must not be overwritten by the raw ``-f`` (None).
    save_json({**vars(args), "model": identifiers[0] if len(models) == 1 else " + ".join(identifiers),
               "models": identifiers, "folds": folds[0] if len(models) == 1 else folds, "checkpoint": args.checkpoint,
               "postprocessing": predictor.postprocessing}, f"{args.output}/prediction_settings.json")
    print(f"predicted {len(written)} case(s) into {args.output} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

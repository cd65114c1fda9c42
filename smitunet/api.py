"""The Python API: one function per command, with typed arguments. The CLIs are thin wrappers around these.

    from smitunet import api
    api.plan_and_preprocess([4], preset="smit_tiny")
    summary = api.train(4, "3d_fullres", 0, epochs=10, iters_per_epoch=25)
    api.predict("imagesTs", "predictions", dataset=4)                 # a folder in, label files out
    api.export(4, "3d_fullres", [0, 1], "exported", format="onnx")     # networks as ONNX, a self-contained folder
    api.predict("imagesTs", "predictions", model_folders=["exported"]) # ... predicted with ONNX Runtime
    labels = api.predict(image, dataset=4, geometry=geometry)          # an array (C, z, y, x) in, labels out
    api.evaluate("labelsTs", "predictions")
    api.convert_dicom("studies", "mapping.json", 201, "HeadNeck")     # DICOM + RTSTRUCT studies -> raw dataset
    api.convert_msd("Task04_Hippocampus", 4)                          # an MSD task -> raw dataset
    api.pretrain("smit.pt", images=["unlabelled"], method="gmim", epochs=30, precision="bf16")
    best = api.find_best_configuration(4, folds=[0, 1, 2, 3, 4])

Errors a user can act on raise ``smitunet.errors.SmitunetError`` (one line naming the file or case); nothing here
prints or exits. Progress and notes go to the ``smitunet`` logger (``configure_logging()`` shows them as the CLIs
do).

Stages and orchestration: this module (with the CLIs and the demo) is the only place that calls several stages in
a row, e.g. training and then the fold validation (prediction and scoring, the evaluation stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry
from smitunet.plans import DEFAULT_PLANS_NAME, Plans
from smitunet.preprocessing.planner import DEFAULT_GPU_MEMORY_GB, DEFAULT_PRESET
from smitunet.training.registry import DEFAULT_TRAINER
from smitunet.utils.log import configure_cli_logging as configure_logging  # noqa: F401  (re-exported)
from smitunet.utils.log import logger


def plan_and_preprocess(datasets: Sequence[str | int], *, plans_name: str = DEFAULT_PLANS_NAME,
                        preset: str = DEFAULT_PRESET, gpu_memory_target: float = DEFAULT_GPU_MEMORY_GB,
                        configurations: Sequence[str] | None = None, num_processes: int | None = None,
                        verify_dataset_integrity: bool = False, preprocess: bool = True,
                        use_existing_plans: bool = False, clean: bool = False,
                        spacing: Sequence[float] | None = None, pretrained: str | Path | None = None,
                        monai_merge_order: str | None = None, decoder: str | None = None) -> list[Plans]:
    """``smitunet_plan_and_preprocess``: integrity check, fingerprint, plans and (unless ``preprocess`` is False)
    the preprocessed cases of each dataset; returns their plans."""
    from smitunet.preprocessing.run import PlanOptions, run_dataset, summary
    from smitunet.utils.parallel import CasePool, available_cores

    num_processes = available_cores() if num_processes is None else int(num_processes)
    if num_processes < 1:
        raise SmitunetError(f"-np must be at least 1, got {num_processes}")
    if use_existing_plans and (spacing or pretrained):
        raise SmitunetError("--use_existing_plans keeps the plans as they are; it cannot be combined with "
                            "--spacing or --pretrained")
    options = PlanOptions(plans_name=plans_name, preset=preset, gpu_memory_target=gpu_memory_target,
                          configurations=configurations, verify_dataset_integrity=verify_dataset_integrity,
                          preprocess=preprocess, use_existing_plans=use_existing_plans, clean=clean, spacing=spacing,
                          decoder=decoder)
    planned = []
    with CasePool(num_processes) as pool:  # before planning imports torch: workers stay lean
        if pretrained is not None:
            from smitunet.networks.checkpoint_architecture import read_architecture

            options.pretrained = read_architecture(pretrained, monai_merge=monai_merge_order)
            logger.warning(f"pretrained network: {options.pretrained.describe()}")
        for identifier in datasets:
            plans, counts = run_dataset(str(identifier), options, pool)
            logger.info(summary(plans, counts))
            planned.append(plans)
    return planned


def train(dataset: str | int, configuration: str = "3d_fullres", fold: str | int = 0, *,
          trainer: str = DEFAULT_TRAINER, plans: str = DEFAULT_PLANS_NAME, continue_training: bool = False,
          validation_only: bool = False, device: str = "auto", epochs: int | None = None,
          iters_per_epoch: int | None = None, num_workers: int | None = None, seed: int = 0,
          pretrained: str | Path | None = None, accept_partial_pretrained: bool = False,
          pretrained_branch: str = "teacher", monai_merge_order: str | None = None,
          labelled_cases: str | Path | list[str] | None = None, export_probabilities: bool = False,
          disable_tta: bool = False, compile: bool = False, precision: str = "auto") -> dict | None:
    """``smitunet_train``: train (or resume) one fold, then run its fold validation; returns the validation
    summary (None on other torchrun ranks, or when a finished run already has one). ``compile``: ``--compile``
    (the training step's forward through ``torch.compile``, eager after a compile failure); ``precision``:
    ``--precision`` (autocast of the training steps: auto = fp16 on CUDA, fp32 on the CPU; bf16 on a CPU with
    AVX512-bf16/AMX)."""
    from smitunet.evaluation.fold_validation import validate_fold
    from smitunet.training.build import build_trainer
    from smitunet.utils.distributed import barrier, shutdown_distributed

    trainer_obj = build_trainer(dataset, configuration, fold, trainer=trainer, plans=plans, device=device,
                                epochs=epochs, iters_per_epoch=iters_per_epoch, num_workers=num_workers, seed=seed,
                                pretrained=pretrained, accept_partial_pretrained=accept_partial_pretrained,
                                pretrained_branch=pretrained_branch, monai_merge_order=monai_merge_order,
                                labelled_cases=labelled_cases,
                                export_probabilities=export_probabilities,
                                disable_tta=disable_tta, compile=compile, precision=precision)
    dist = trainer_obj.ctx.dist
    try:
        done = trainer_obj.run(continue_training=continue_training, validation_only=validation_only)
        summary = None
        if dist.is_main and done.needs_validation:
            summary = validate_fold(done.network, done.plans, done.configuration, done.data_folder,
                                    done.validation_cases, done.output_dir / "validation", trainer_obj.device,
                                    mirror_axes=done.mirror_axes, save_probabilities=done.save_probabilities,
                                    about={"fold": trainer_obj.ctx.fold, "trainer": trainer_obj.ctx.trainer_name,
                                           "epochs": done.epochs},
                                    previous_stage_folder=done.previous_stage_folder,
                                    next_stage_folder=done.next_stage_folder)
            dice = ", ".join(f"{k}: {v['dice']:.4f}" for k, v in summary["mean"].items())
            done.log(f"fold {trainer_obj.ctx.fold} validation on {len(summary['metric_per_case'])} cases: mean Dice "
                     f"{summary['foreground_mean']['dice']:.4f} ({dice}); written to {done.output_dir / 'validation'}")
        barrier(dist)
        return summary
    finally:
        shutdown_distributed(dist)


def predict(images: str | Path | np.ndarray, output: str | Path | None = None, *, dataset: str | int | None = None,
            configurations: Sequence[str] | None = None, trainers: Sequence[str] | None = None,
            plans: Sequence[str] | None = None, folds: Sequence[str] | None = None, checkpoint: str = "final",
            disable_ensemble: bool = False, options=None, geometry: Geometry | None = None,
            settings_extra: dict | None = None, prev_stage_predictions: str | Path | None = None,
            model_folders: Sequence[str | Path] | None = None, backend: str | None = None):
    """``smitunet_predict``. ``images`` is a folder (or one file / DICOM series): the label files are written into
    ``output`` (with ``prediction_settings.json``) and their paths returned. Or ``images`` is an array
    (C, z, y, x) or (z, y, x) with its ``geometry``: the labels (z, y, x) are returned and nothing is written.
    ``options`` is a ``PredictionOptions`` (default: mirroring, auto device). A cascade (``3d_cascade_fullres``)
    runs its 3d_lowres model (same trainer, plans and folds) first, unless ``prev_stage_predictions`` (a folder of
    its segmentations at the input geometry, nnU-Net's ``-prev_stage_predictions``) is given.

    ``model_folders``: folders written by ``export`` (one model each; several are ensembled), run by ``backend``
    ("onnxruntime" or "torchscript", default: what the folder was exported as) instead of the trained checkpoints;
    ``folds`` then selects among the exported folds."""
    import dataclasses

    from smitunet.inference.model_folder import choose_models, postprocessing_for, resolve_folds
    from smitunet.inference.predictor import PredictionOptions, Predictor

    options = options or PredictionOptions()
    if model_folders or backend not in (None, "torch"):
        return _predict_exported(images, output, model_folders, backend, folds, options, geometry, settings_extra,
                                 named=dict(dataset=dataset, configurations=configurations, trainers=trainers,
                                            plans=plans, prev_stage_predictions=prev_stage_predictions
                                            or options.prev_stage_predictions))
    if prev_stage_predictions is not None:
        options = dataclasses.replace(options, prev_stage_predictions=prev_stage_predictions)
    _check_dicom_output(images, options)  # before the models load: a wrong input costs nothing, writes nothing
    models = choose_models(None if dataset is None else str(dataset), configurations, trainers, plans, checkpoint,
                           disable_ensemble)
    chosen = [resolve_folds(m, list(folds) if folds else None, checkpoint) for m in models]
    predictor = Predictor.from_model_folders([(m.folder, f) for m, f in zip(models, chosen)], checkpoint, options,
                                             postprocessing_for(models))
    described = "; ".join(f"{m.identifier} folds {', '.join(f)}" for m, f in zip(models, chosen))
    logger.warning(f"{'ensemble' if len(models) > 1 else 'model'} {described}, checkpoint_{checkpoint}, "
                   f"device {predictor.device}, TTA {'on' if options.use_tta else 'off'}")
    return _run_predictor(predictor, images, output, geometry, lambda: _save_prediction_settings(
        output, models, chosen, checkpoint, predictor, settings_extra))


def _predict_exported(images, output, model_folders, backend, folds, options, geometry, settings_extra, named):
    """``predict`` with exported folders (smitunet_export) run by ONNX Runtime or TorchScript."""
    from smitunet.inference.onnx_backend import ExportedModel
    from smitunet.inference.predictor import Predictor
    from smitunet.utils.files import save_json

    if not model_folders:
        raise SmitunetError(f"--backend {backend} runs an exported model folder (-m DIR); make one with "
                            "smitunet_export")
    if backend == "torch":
        raise SmitunetError("an exported model folder (-m) runs with --backend onnxruntime or torchscript, not torch")
    given = [f"-{flag}" for flag, key in (("d", "dataset"), ("c", "configurations"), ("tr", "trainers"),
                                          ("p", "plans"), ("prev_stage_predictions", "prev_stage_predictions"))
             if named[key]]
    if given:
        raise SmitunetError(f"-m takes the model from the exported folder; {', '.join(given)} cannot be combined "
                            "with it")
    _check_dicom_output(images, options)
    models = [ExportedModel(folder, folds, backend, options.device) for folder in model_folders]
    names = [str(Path(f).resolve()) for f in model_folders]
    if len(set(names)) != len(names):
        raise SmitunetError(f"the same exported folder is named twice: {', '.join(map(str, model_folders))}")
    # An ensemble's postprocessing was chosen for the ensemble, not for one member: only a single model brings its own.
    predictor = Predictor.from_models(models, options, models[0].postprocessing() if len(models) == 1 else None)
    described = "; ".join(f"{m.identifier} folds {', '.join(m.folds)}" for m in models)
    logger.warning(f"{'ensemble' if len(models) > 1 else 'model'} {described}, backend {predictor.device}, "
                   f"TTA {'on' if options.use_tta else 'off'}")
    def settings():
        save_json({**(settings_extra or {}), "model": " + ".join(m.identifier for m in models),
                   "models": [m.manifest.get("model") for m in models], "model_folders": names,
                   "backend": models[0].backend, "folds": [m.folds for m in models] if len(models) > 1
                   else models[0].folds, "checkpoint": models[0].manifest.get("checkpoint"),
                   "postprocessing": predictor.postprocessing}, Path(output) / "prediction_settings.json")

    return _run_predictor(predictor, images, output, geometry, settings)


def _check_dicom_output(images, options) -> None:
    if options.dicom_output:
        from smitunet.inference.inputs import find_input_cases
        from smitunet.inference.predictor import check_dicom_output

        if isinstance(images, np.ndarray):
            raise SmitunetError("--dicom_output needs DICOM series input, not an array")
        check_dicom_output(find_input_cases(images, 1), options.dicom_output)


def _run_predictor(predictor, images, output, geometry, save_settings):
    """An array in, labels out (nothing written); or a folder in, label files out and the settings saved, also when
    some cases failed (for the others)."""
    from smitunet.errors import CasesFailedError

    if isinstance(images, np.ndarray):
        if geometry is None:
            raise SmitunetError("predicting an array needs its geometry (smitunet.imageio.Geometry)")
        return predictor.predict_array(images, geometry)
    if output is None:
        raise SmitunetError("predicting a folder needs an output folder")
    try:
        written = predictor.predict_folder(images, output)
    except CasesFailedError:
        save_settings()
        raise
    save_settings()
    return written


def export(dataset: str | int, configuration: str = "3d_fullres", folds: Sequence[str | int] | None = None,
           output: str | Path = "exported", *, format: str = "onnx", trainer: str | None = None,
           plans: str | None = None, checkpoint: str = "final") -> Path:
    """``smitunet_export``: each fold's network of one trained model as ONNX or TorchScript, with its plans,
    dataset.json and postprocessing, into the new folder ``output`` (returned). ``folds``: default all trained."""
    from smitunet.inference.model_folder import resolve_folds, select_model
    from smitunet.inference.network_export import EXPORT_FORMATS, export_model

    if format not in EXPORT_FORMATS:  # before the models are looked up: a typo costs nothing
        raise SmitunetError(f"--format {format!r}: choose from {', '.join(EXPORT_FORMATS)}")
    model = select_model(str(dataset), configuration, trainer, plans, checkpoint)
    chosen = resolve_folds(model, [str(f) for f in folds] if folds else None, checkpoint)
    return export_model(model, chosen, output, format, checkpoint)


def _save_prediction_settings(output, models, chosen, checkpoint, predictor, settings_extra) -> None:
    from smitunet.utils.files import save_json

    identifiers = [m.identifier for m in models]
    # The caller's settings first: the resolved folds and models must not be overwritten by the raw ``-f`` (None).
    save_json({**(settings_extra or {}), "model": identifiers[0] if len(models) == 1 else " + ".join(identifiers),
               "models": identifiers, "folds": chosen[0] if len(models) == 1 else chosen, "checkpoint": checkpoint,
               "postprocessing": predictor.postprocessing}, Path(output) / "prediction_settings.json")


def evaluate(reference_folder: str | Path, prediction_folder: str | Path, *, labels=None,
             output_file: str | Path | None = None, nsd_tolerance_mm: float = 1.0, num_processes: int = 1,
             allow_subset: bool = False, ignore_label: int | None = None) -> dict:
    """``smitunet_evaluate``: Dice, IoU, HD95 and NSD per case and class; writes and returns ``summary.json``.
    Reference voxels of ``ignore_label`` count for nothing."""
    from smitunet.evaluation.evaluate import evaluate_folders

    return evaluate_folders(reference_folder, prediction_folder, labels, output_file, nsd_tolerance_mm,
                            num_processes, allow_subset, ignore_label)


def convert_dicom(studies: str | Path, mapping, dataset_id: int, name: str, *, overwrite: bool = False,
                  skip_missing: bool = False, output_raw: str | Path | None = None) -> Path:
    """``smitunet_convert_dicom``: a folder of studies (a CT/MR series + an RTSTRUCT each) -> raw dataset
    ``DatasetXXX_name`` under smitunet_raw (or ``output_raw``); ``mapping`` is a JSON file or a dict
    {label: [accepted ROI names]}, later labels winning overlaps. Returns the dataset folder."""
    from smitunet.dataset.dicom_rt import convert_dicom as _convert

    return _convert(studies, mapping, dataset_id, name, output_raw=None if output_raw is None else Path(output_raw),
                    overwrite=overwrite, skip_missing=skip_missing)


def convert_msd(task_dir: str | Path, dataset_id: int | None = None, *, overwrite: bool = False,
                num_processes: int | None = None) -> Path:
    """``smitunet_convert_msd -i TASK -d ID``: an MSD task folder as a raw dataset; returns its folder."""
    from smitunet.dataset.msd import convert_msd as convert

    return convert(task_dir, dataset_id, overwrite=overwrite, num_processes=num_processes)


def find_best_configuration(dataset: str | int, *, folds: Sequence[str | int] = (0, 1, 2, 3, 4),
                            configurations: Sequence[str] | None = None, trainers: Sequence[str] | None = None,
                            plans: Sequence[str] | None = None, ensembling: bool = True, use_tta: bool = True,
                            device: str = "auto") -> dict:
    """``smitunet_find_best_configuration``: rank the trained models (and pairs, unless ``ensembling`` is False) by
    cross-validation Dice, choose the post-processing, write ``inference_information.json``; returns it
    (``best``, ``postprocessing``, ``predict_command``)."""
    from smitunet.evaluation.best_configuration import find_best

    return find_best(dataset, tuple(str(f) for f in folds), configurations, trainers, plans, ensembling=ensembling,
                     use_tta=use_tta, device=device)


def pretrain(output: str | Path, *, datasets: Sequence[str | int] = (), images: Sequence[str | Path] = (),
             **settings) -> Path:
    """``smitunet_pretrain``: SMIT / SMART / GMIM pretraining on the images of raw ``datasets`` (labels ignored) and
    of the folders in ``images``; returns ``output`` (``smit.pt`` for ``train(pretrained=...)``).

    ``settings`` are the CLI's flags by their long names, with the same defaults: ``method="gmim"``, ``epochs=30``,
    ``plans="…/smitunetPlans.json"``, ``precision="bf16"``, ``continue_training=True`` (``--c``), on/off flags as
    booleans (``gmim_siamese=False``). An unknown name or a value outside a flag's choices raises SmitunetError.
    """
    from smitunet.pretraining.cli import build_parser, run

    parser = build_parser()
    args = parser.parse_args(["-o", str(output)])
    args.d, args.i = [str(d) for d in datasets], [Path(f) for f in images]
    actions = {a.dest: a for a in parser._actions}
    for name, value in settings.items():
        action = actions.get(name)
        if action is None or name in ("output", "d", "i", "help"):
            raise SmitunetError(f"pretrain: unknown setting {name!r}")
        if isinstance(value, bool) and action.choices == ("on", "off"):
            value = "on" if value else "off"
        elif value is not None and action.type is not None and action.nargs is None:
            value = action.type(value)
        elif value is not None and action.type is not None:
            value = [action.type(v) for v in value]
        if action.choices is not None and value not in action.choices:
            raise SmitunetError(f"pretrain: {name}={value!r}; choose from {', '.join(map(str, action.choices))}")
        setattr(args, name, value)
    run(args)
    return Path(output)

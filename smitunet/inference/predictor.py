"""Prediction engine: preprocess like training, sliding window per fold, average softmax, export per case.

An ensemble of several trained models (e.g. two configurations, as picked by smitunet_find_best_configuration)
averages the models' probabilities with equal weight: models sharing plans and configuration are averaged in
their common preprocessed space; otherwise each model's mean is restored to the original geometry first.

Memory per case: the preprocessed input, one float32 logit volume per fold in flight (softmaxed in place and
added to the running mean), then the export. Cases are written atomically, so an interrupted run leaves
only finished files and ``continue_prediction`` picks up where it stopped.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from smitunet.checkpoint_io import load_training_checkpoint
from smitunet.dataset.integrity import all_finite, read_checked_volume
from smitunet.dicom_io import DICOM_OUTPUTS, dicom_output_file
from smitunet.errors import BadInputError, CasesFailedError, SmitunetError
from smitunet.postprocessing import apply_postprocessing, load_postprocessing
from smitunet.imageio import Geometry, write_image
from smitunet.inference.export import (activate, export_case, probabilities_to_labels,
                                      probabilities_to_segmentation, probability_file)
from smitunet.inference.inputs import InputCase, find_input_cases
from smitunet.inference.sliding_window import predict_sliding_window, tile_batch_default
from smitunet.networks.registry import build_from_config
from smitunet.plans import Plans
from smitunet.utils.compile import maybe_compile
from smitunet.utils.device import resolve_device
from smitunet.utils.files import make_dirs, remove_stale_temporary, save_npz
from smitunet.utils.log import logger
from smitunet.utils.precision import autocast_dtype


@dataclass
class PredictionOptions:
    step_size: float = 0.5
    use_tta: bool = True
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    precision: str = "auto"              # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16 (CUDA or CPU)
    tile_batch_size: int | None = None   # None: 4 on CUDA, 1 on CPU
    save_probabilities: bool = False
    continue_prediction: bool = False
    num_parts: int = 1
    part_id: int = 0
    num_processes: int = 1               # background threads for reading/preprocessing and export; 0 = none
    apply_postprocessing: bool = True
    dicom_output: tuple[str, ...] = ()   # "rtstruct" and/or "seg" beside the label file; DICOM series input only
    strict: bool = False                 # check every input first; one bad case stops the run before any output
    compile: bool = False                # --compile: the network's forward through torch.compile (eager on failure)
    # A cascade's previous-stage segmentations at the input geometry, {case}{ending} (nnU-Net's
    # -prev_stage_predictions); None: the previous stage's model (same trainer, plans and folds) runs here.
    prev_stage_predictions: str | Path | None = None
    progress: bool | None = None         # None: when stderr is a terminal
    stats: dict = field(default_factory=dict)  # filled with tiles / forward_seconds / seconds per case


class FoldEnsemble:
    """One trained model (plans + configuration + network) and the weights of each of its folds."""

    def __init__(self, checkpoint_files: Sequence[Path], device: torch.device, compile: bool = False):
        if not checkpoint_files:
            raise SmitunetError("no checkpoint to predict with")
        self.device = device
        self.state_dicts, reference = [], None
        for path in checkpoint_files:
            ckpt = load_training_checkpoint(path)
            if reference is None:
                reference = ckpt
                self.plans = Plans.from_dict(ckpt.plans, source=f"{path} (plans)")
                self.configuration = ckpt.configuration
                self.network_config = ckpt.network
                # the trainer may restrict test-time mirroring ([] = none)
                self.mirror_axes = tuple(ckpt.inference_mirror_axes or ())
            elif ckpt.network != reference.network or ckpt.configuration != reference.configuration:
                raise SmitunetError(f"{path}: network or configuration differs from {checkpoint_files[0]}; "
                                    "folds of one model must share them")
            self.state_dicts.append(ckpt.state_dict)
        self.config_plan = self.plans.configuration(self.configuration)
        self.previous_stage = self.config_plan.previous_stage  # a cascade: its input includes that stage's labels
        self.previous_model: FoldEnsemble | None = None       # set by the Predictor when it runs that stage itself
        kwargs = dict(self.network_config["kwargs"])
        kwargs["deep_supervision"] = False
        self.network = build_from_config(self.network_config["name"], kwargs,
                                         self.network_config.get("builder")).to(device).eval()
        if hasattr(self.network, "deep_supervision"):
            self.network.deep_supervision = False
        # What the sliding window calls. Folds load their weights into the same parameters in place, so one
        # compiled graph serves every fold; the tiles all have the patch's shape, so shapes stay static.
        self.forward_network = maybe_compile(self.network, compile, device, what="prediction network")

    @property
    def num_classes(self) -> int:
        return self.plans.num_classes

    def predict_probabilities(self, data: np.ndarray, options: PredictionOptions) -> np.ndarray:
        """Mean probabilities (softmax, or sigmoid per region) over folds, float32 (K, z, y, x), in the
        preprocessed space."""
        tile_batch = options.tile_batch_size or tile_batch_default(self.config_plan, self.device)
        output_device = self._output_device(data.shape[1:])
        tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        mean = None
        for state_dict in self.state_dicts:
            self.network.load_state_dict(state_dict)
            logits = predict_sliding_window(
                self.forward_network, tensor, self.config_plan.patch_size, self.num_classes, options.step_size,
                self.mirror_axes if options.use_tta else None, tile_batch, self.device,
                output_device=output_device, autocast_dtype=autocast_dtype(options.precision, self.device),
                stats=options.stats, progress=options.progress)
            activate(logits, self.plans)  # softmax, or sigmoid per region
            mean = logits if mean is None else mean.add_(logits)
            del logits
        mean /= len(self.state_dicts)
        return mean.cpu().numpy()

    def _output_device(self, spatial: Sequence[int]) -> torch.device:
        """Accumulate on the GPU when two volumes of K channels fit comfortably; else on the CPU."""
        if self.device.type != "cuda":
            return self.device
        needed = 2 * self.num_classes * int(np.prod(spatial)) * 4
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if needed < 0.5 * free else torch.device("cpu")


@dataclass
class CascadeInput:
    """A cascade's preprocessed case whose previous stage is still to run (on the network's thread): the
    cascade's own data and the previous stage's."""

    data: np.ndarray
    previous_data: np.ndarray
    previous_properties: dict


def previous_stage_checkpoints(checkpoint_files: Sequence[Path], previous_stage: str) -> list[Path]:
    """The previous stage's checkpoints of the same folds, trainer and plans:
    ``TRAINER__PLANS__3d_cascade_fullres/fold_F/checkpoint_X.pt`` -> ``TRAINER__PLANS__3d_lowres/fold_F/...``."""
    from smitunet.paths import sibling_model_dir

    files = [sibling_model_dir(p.parent.parent, previous_stage) / p.parent.name / p.name for p in checkpoint_files]
    for own, path in zip(checkpoint_files, files):
        if not path.is_file():
            trainer, plans_name, configuration = own.parent.parent.name.split("__")
            fold = own.parent.name[len("fold_"):]
            raise SmitunetError(f"{path}: missing; {configuration} runs the {previous_stage} model of fold {fold} "
                                f"first: train it (smitunet_train {own.parent.parent.parent.name} {previous_stage} "
                                f"{fold} -tr {trainer} -p {plans_name}) or give its predictions with "
                                "-prev_stage_predictions DIR")
    return files


def output_file_for(case: InputCase, output_dir: Path) -> Path:
    return output_dir / f"{case.name}{case.output_ending}"


def select_cases(cases: list[InputCase], output_dir: Path, options: PredictionOptions) -> tuple[list[InputCase], int]:
    """This worker's share of the cases, minus finished ones when continuing; also the number skipped."""
    if not 0 <= options.part_id < options.num_parts:
        raise SmitunetError(f"--part_id {options.part_id} must be in 0..{options.num_parts - 1}")
    mine = cases[options.part_id::options.num_parts]
    if not options.continue_prediction:
        return mine, 0
    todo = [c for c in mine if not _finished(c, output_dir, options.save_probabilities, options.dicom_output)]
    for case in todo:
        _remove_stale_temporaries(case, output_dir)
    return todo, len(mine) - len(todo)


def _remove_stale_temporaries(case: InputCase, output_dir: Path) -> None:
    """Temp files of a killed run (atomic_path's ``.{name}.*.part*``); only this worker's cases are touched, and
    never a file another run into the same folder is writing now."""
    out = output_file_for(case, output_dir)
    dicom = [dicom_output_file(output_dir / case.name, kind) for kind in DICOM_OUTPUTS]
    for name in (out.name, probability_file(out).name, *(d.name for d in dicom)):
        for stale in output_dir.glob(f".{name}.*.part*"):
            remove_stale_temporary(stale)


def _finished(case: InputCase, output_dir: Path, need_probabilities: bool, dicom_output: Sequence[str] = ()) -> bool:
    out = output_file_for(case, output_dir)
    return (out.is_file() and (not need_probabilities or probability_file(out).is_file())
            and all(dicom_output_file(output_dir / case.name, kind).is_file() for kind in dicom_output))


class Predictor:
    """Predict folders of cases with one trained model (all its chosen folds), or an ensemble of models."""

    def __init__(self, checkpoint_files: Sequence[Path], options: PredictionOptions | None = None,
                 postprocessing: dict | None = None, more_models: Sequence[Sequence[Path]] = ()):
        self.options = options or PredictionOptions()
        self.device = resolve_device(self.options.device)
        autocast_dtype(self.options.precision, self.device)  # an unusable --precision stops before models or output
        models = [FoldEnsemble([Path(p) for p in files], self.device, self.options.compile)
                  for files in (checkpoint_files, *more_models)]
        for model, files in zip(models, (checkpoint_files, *more_models)):
            if model.previous_stage is not None and self.options.prev_stage_predictions is None:
                model.previous_model = FoldEnsemble(
                    previous_stage_checkpoints([Path(p) for p in files], model.previous_stage), self.device,
                    self.options.compile)
                low = model.previous_model
                if low.configuration != model.previous_stage or \
                        low.config_plan != model.plans.configurations.get(model.previous_stage):
                    raise SmitunetError(f"{files[0]}: its {model.previous_stage} model was trained with other plans "
                                        f"(or is a {low.configuration} model); retrain one of the two")
        self._use_models(models, postprocessing)

    def _use_models(self, models: list, postprocessing: dict | None) -> None:
        self.models = models
        self.model = self.models[0]
        _check_compatible(self.models)
        self.groups = _group_by_preprocessing(self.models)
        self.postprocessing = postprocessing if self.options.apply_postprocessing else None

    @classmethod
    def from_models(cls, models: Sequence, options: PredictionOptions | None = None,
                    postprocessing: dict | None = None) -> "Predictor":
        """Models already loaded that stand for ``FoldEnsemble`` (``plans``, ``configuration``, ``device``,
        ``predict_probabilities``): the exported folders of ``onnx_backend.ExportedModel``."""
        predictor = cls.__new__(cls)
        predictor.options = options or PredictionOptions()
        predictor.device = models[0].device
        predictor._use_models(list(models), postprocessing)
        return predictor

    @classmethod
    def from_model_folder(cls, model_dir: Path, folds: Sequence[str], checkpoint_name: str = "final",
                          options: PredictionOptions | None = None) -> "Predictor":
        return cls.from_model_folders([(model_dir, folds)], checkpoint_name, options, load_postprocessing(model_dir))

    @classmethod
    def from_model_folders(cls, members: Sequence[tuple[Path, Sequence[str]]], checkpoint_name: str = "final",
                           options: PredictionOptions | None = None,
                           postprocessing: dict | None = None) -> "Predictor":
        """``members``: (model folder, folds) per model; several members predict as an equal-weight ensemble."""
        files = [[Path(d) / f"fold_{f}" / f"checkpoint_{checkpoint_name}.pt" for f in folds] for d, folds in members]
        return cls(files[0], options, postprocessing, more_models=files[1:])

    def preprocess(self, case: InputCase, model: "FoldEnsemble | None" = None):
        model = model or self.model
        data, geometry = read_checked_volume(case.name, list(case.channels))
        return self._preprocess_array(data, geometry, model, case.name, case.output_ending)

    def _preprocess_array(self, data: np.ndarray, geometry: Geometry, model: FoldEnsemble, name: str = "",
                          ending: str = ""):
        """(preprocessed data, properties); a cascade's data has the previous stage's one-hot channels appended,
        or is a ``CascadeInput`` when that stage is still to run."""
        from smitunet.preprocessing.cascade import append_previous_stage
        from smitunet.preprocessing.preprocessor import preprocess_case

        if model.previous_stage is None:
            prepared, _, properties = preprocess_case(data, geometry, model.plans, model.configuration)
            return prepared, properties
        if model.previous_model is None:  # given at the input geometry: preprocessed like a label map
            previous = self._given_previous_stage(name, ending, geometry)
            prepared, previous, properties = preprocess_case(data, geometry, model.plans, model.configuration,
                                                             seg=previous)
            return append_previous_stage(prepared, previous[0], model.plans.foreground_labels), properties
        prepared, _, properties = preprocess_case(data, geometry, model.plans, model.configuration)
        low = model.previous_model
        previous_data, _, previous_properties = preprocess_case(data, geometry, low.plans, low.configuration)
        return CascadeInput(prepared, previous_data, previous_properties), properties

    def previous_stage_file(self, name: str, ending: str) -> Path:
        return Path(self.options.prev_stage_predictions) / f"{name}{ending or self.model.plans.file_ending}"

    def _given_previous_stage(self, name: str, ending: str, geometry: Geometry) -> np.ndarray:
        from smitunet.imageio import read_image

        path = self.previous_stage_file(name, ending)
        if not path.is_file():
            raise BadInputError(name, [f"{path}: previous-stage segmentation of case {name} not found "
                                       "(-prev_stage_predictions)"])
        segmentation, own = read_image(path)
        if own.shape_zyx != geometry.shape_zyx:
            raise BadInputError(name, [f"{path}: previous-stage segmentation of shape {own.shape_zyx} does not match "
                                       f"the image of case {name} {geometry.shape_zyx}"])
        return segmentation

    def _complete(self, data, model: FoldEnsemble) -> np.ndarray:
        """Run the previous stage of a ``CascadeInput`` and append its segmentation, resampled to the cascade's
        preprocessed geometry exactly as the fold validation writes it for training."""
        if not isinstance(data, CascadeInput):
            return data
        from smitunet.inference.export import resample_to_next_stage
        from smitunet.preprocessing.cascade import append_previous_stage

        low = model.previous_model
        probabilities = low.predict_probabilities(data.previous_data, self.options)
        segmentation = resample_to_next_stage(probabilities, data.previous_properties, model.plans, low.configuration,
                                              model.configuration, shape=data.data.shape[1:])
        return append_previous_stage(data.data, segmentation, model.plans.foreground_labels)

    def predict_case(self, data: np.ndarray, group: int = 0) -> np.ndarray:
        """Mean probabilities of the models of one preprocessing group (all models when they share it)."""
        models = self.groups[group]
        data = self._complete(data, models[0])
        mean = models[0].predict_probabilities(data, self.options)
        for model in models[1:]:
            mean += model.predict_probabilities(data, self.options)
        mean /= len(models)
        return mean

    def export(self, probabilities: np.ndarray, properties: dict, output_file: Path,
               case: InputCase | None = None) -> None:
        export_case(probabilities, properties, self.model.plans, self.model.configuration, output_file,
                    self.postprocessing, self.options.save_probabilities, self._dicom_writer(case, output_file))

    def _dicom_writer(self, case: InputCase | None, output_file: Path):
        """Writes the asked DICOM outputs of ``case`` from its labels (None when none are asked)."""
        if not self.options.dicom_output or case is None:
            return None
        from smitunet.dicom_io import load_series_headers, write_dicom_outputs

        def write(labels: np.ndarray, geometry: Geometry) -> None:
            series = load_series_headers(case.channels[0], geometry)
            write_dicom_outputs(self.options.dicom_output, series, labels, self.model.plans.export_labels,
                                output_file.parent / case.name)

        return write

    def _prepare(self, case: InputCase) -> list[tuple[np.ndarray, dict]]:
        return [self.preprocess(case, group[0]) for group in self.groups]

    def _infer(self, prepared: list[tuple[np.ndarray, dict]]) -> list[tuple[np.ndarray, dict]]:
        return [(self.predict_case(data, g), properties) for g, (data, properties) in enumerate(prepared)]

    def _export(self, results: list[tuple[np.ndarray, dict]], output_file: Path,
                case: InputCase | None = None) -> None:
        if len(results) == 1:
            self.export(*results[0], output_file, case)
            return
        labels, total = self._ensemble_labels(results)
        if self.options.save_probabilities:
            save_npz(probability_file(output_file), compressed=True, probabilities=total)
        geometry = Geometry.from_dict(results[0][1]["geometry"])
        if (write_dicom := self._dicom_writer(case, output_file)) is not None:
            write_dicom(labels, geometry)  # before the label file: a case is finished once that exists
        write_image(labels, geometry, output_file)

    def _ensemble_labels(self, results: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, np.ndarray]:
        """Models with different preprocessing: each group's mean restored to the original geometry, averaged."""
        from smitunet.preprocessing.preprocessor import restore_original_geometry

        total = None
        for (probabilities, properties), group in zip(results, self.groups):
            restored = np.asarray(restore_original_geometry(probabilities, properties, group[0].plans,
                                                            group[0].configuration, is_seg=False), dtype=np.float32)
            restored *= len(group)   # equal weight per model
            total = restored if total is None else np.add(total, restored, out=total)
        total /= len(self.models)
        labels = apply_postprocessing(probabilities_to_segmentation(total, self.model.plans), self.postprocessing)
        return labels, total

    def predict_array(self, data: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Labels (z, y, x) of one image given as an array (C, z, y, x) with its geometry: no files involved."""
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 3:
            data = data[None]
        if data.shape[0] != self.model.plans.num_channels or tuple(data.shape[1:]) != geometry.shape_zyx:
            raise SmitunetError(f"image of shape {data.shape} does not fit: the model needs "
                                f"{self.model.plans.num_channels} channel(s) and the geometry says {geometry.shape_zyx}")
        if not all_finite(data):
            raise SmitunetError("image contains NaN or Inf voxels")
        if min(data.shape[1:]) < 2:
            raise SmitunetError(f"image of shape {data.shape} is a single slice; a 3D model needs a volume")
        if self.options.prev_stage_predictions is not None and any(m.previous_stage for m in self.models):
            raise SmitunetError("-prev_stage_predictions applies to folders of cases; an array's previous stage runs "
                                "here")
        results = []
        for g, group in enumerate(self.groups):
            prepared, properties = self._preprocess_array(data, geometry, group[0])
            results.append((self.predict_case(prepared, g), properties))
        if len(results) > 1:
            return self._ensemble_labels(results)[0]
        labels, _ = probabilities_to_labels(*results[0], self.model.plans, self.model.configuration, False)
        return apply_postprocessing(np.ascontiguousarray(labels), self.postprocessing)

    def predict_folder(self, input_path: str | Path, output_dir: str | Path) -> list[Path]:
        """Predict every (remaining) case of ``input_path`` into ``output_dir``; returns the files written.

        A case whose input fails the checks (``read_checked_volume``) is one warning line and gets no output; the
        others are predicted, then ``CasesFailedError`` lists the failed ones. ``options.strict``: every input is
        checked first and one bad case stops the run before anything is written."""
        output_dir = Path(output_dir)
        cases = find_input_cases(input_path, self.model.plans.num_channels)
        if self.options.dicom_output:
            check_dicom_output(cases, self.options.dicom_output)
        todo, skipped = select_cases(cases, output_dir, self.options)
        if skipped:
            logger.warning(f"continuing: {skipped} case(s) already predicted, {len(todo)} to go")
        self._check_previous_stage_files(todo)
        if self.options.strict:
            self._check_all(todo)
        make_dirs(output_dir)
        self.failed: dict[str, str] = {}
        if self.options.num_processes <= 0:
            written = [out for case in self._progress(todo) if (out := self._run_one(case, output_dir))]
        else:
            written = self._pipelined(todo, output_dir)
        if self.failed:
            raise CasesFailedError(
                f"{len(self.failed)} case(s) failed and were skipped, no output written for them: "
                f"{', '.join(sorted(self.failed))} ({len(written)} case(s) predicted into {output_dir})",
                self.failed, written)
        return written

    def _check_previous_stage_files(self, todo: list[InputCase]) -> None:
        """-prev_stage_predictions: a segmentation for every case, checked before anything is written."""
        if self.options.prev_stage_predictions is None or not any(m.previous_stage for m in self.models):
            return
        folder = Path(self.options.prev_stage_predictions)
        if not folder.is_dir():
            raise SmitunetError(f"-prev_stage_predictions {folder}: not a folder")
        missing = [c for c in todo if not self.previous_stage_file(c.name, c.output_ending).is_file()]
        if missing:
            first = missing[0]
            more = f" ({len(missing)} of {len(todo)} cases have none)" if len(missing) > 1 else ""
            raise SmitunetError(f"{self.previous_stage_file(first.name, first.output_ending)}: no previous-stage "
                                f"segmentation of case {first.name}{more}; predict them with smitunet_predict -c "
                                f"{self.model.previous_stage} into that folder, or leave out -prev_stage_predictions")

    def _check_all(self, todo: list[InputCase]) -> None:
        """--strict: read and check every input (a second read per case, the price of writing nothing)."""
        failed = {}
        for case in todo:
            try:
                read_checked_volume(case.name, list(case.channels))
            except BadInputError as exc:
                logger.warning(f"bad input: {exc}")
                failed[case.name] = str(exc)
        if failed:
            raise SmitunetError(f"--strict: {len(failed)} of {len(todo)} input case(s) failed the checks, nothing "
                                f"was written: {', '.join(sorted(failed))}")

    def _skip(self, case: InputCase, exc: BadInputError) -> None:
        logger.warning(f"skipped: {exc}")
        self.failed[case.name] = str(exc)

    def _run_one(self, case: InputCase, output_dir: Path) -> Path | None:
        start = time.perf_counter()
        try:
            prepared = self._prepare(case)
        except BadInputError as exc:
            self._skip(case, exc)
            return None
        out = output_file_for(case, output_dir)
        self._export(self._infer(prepared), out, case)
        self._record(case, start)
        return out

    def _pipelined(self, todo: list[InputCase], output_dir: Path) -> list[Path]:
        """Read/preprocess ahead and export behind the network in threads (bounded: no pile-up of volumes)."""
        n = self.options.num_processes
        written, exports = [], deque()
        with ThreadPoolExecutor(n) as readers, ThreadPoolExecutor(n) as writers:
            pending = deque(readers.submit(self._prepare, c) for c in todo[:n])
            for i, case in enumerate(self._progress(todo)):
                start = time.perf_counter()
                future = pending.popleft()
                if i + n < len(todo):
                    pending.append(readers.submit(self._prepare, todo[i + n]))
                try:
                    prepared = future.result()
                except BadInputError as exc:
                    self._skip(case, exc)
                    continue
                results = self._infer(prepared)
                del prepared
                out = output_file_for(case, output_dir)
                exports.append(writers.submit(self._export, results, out, case))
                del results
                while len(exports) > n:
                    exports.popleft().result()
                self._record(case, start)
                written.append(out)
            for fut in exports:
                fut.result()
        return written

    def _progress(self, todo):
        show = sys.stderr.isatty() if self.options.progress is None else self.options.progress
        return tqdm(todo, desc="cases", disable=not show)

    def _record(self, case: InputCase, start: float) -> None:
        self.options.stats.setdefault("case_seconds", {})[case.name] = time.perf_counter() - start


def check_dicom_output(cases: Sequence[InputCase], kinds: Sequence[str]) -> None:
    """DICOM outputs refer to a source series: every case must be one DICOM series folder; checked before any
    output is written, with the optional libraries."""
    from smitunet.dicom_io import require_dicom

    unknown = [k for k in kinds if k not in DICOM_OUTPUTS]
    if unknown:
        raise SmitunetError(f"--dicom_output: unknown kind(s) {', '.join(unknown)}; "
                            f"choose from {', '.join(DICOM_OUTPUTS)}")
    not_series = [c for c in cases if len(c.channels) != 1 or not Path(c.channels[0]).is_dir()]
    if not_series:
        raise SmitunetError(f"--dicom_output needs DICOM series input (each case one series folder); "
                            f"{not_series[0].channels[0]} is not a DICOM series"
                            + (f" ({len(not_series)} such input(s))" if len(not_series) > 1 else ""))
    require_dicom()


def _check_compatible(models: list[FoldEnsemble]) -> None:
    first = models[0]
    for m in models[1:]:
        if m.plans.labels != first.plans.labels or m.plans.num_channels != first.plans.num_channels:
            raise SmitunetError(f"ensemble: {m.plans.dataset_name}/{m.configuration} has other labels or channels "
                                f"than {first.plans.dataset_name}/{first.configuration}; models cannot be ensembled")


def _group_by_preprocessing(models: list[FoldEnsemble]) -> list[list[FoldEnsemble]]:
    """Models whose plans and configuration are equal see identical preprocessed data: one group each."""
    groups: list[list[FoldEnsemble]] = []
    for m in models:
        if m.previous_stage is not None:  # its input depends on its own previous-stage model
            groups.append([m])
            continue
        for group in groups:
            if group[0].configuration == m.configuration and group[0].plans.to_dict() == m.plans.to_dict():
                group.append(m)
                break
        else:
            groups.append([m])
    return groups

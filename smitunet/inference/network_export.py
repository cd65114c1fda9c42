"""``smitunet_export``: each fold's network of a trained model as ONNX or TorchScript, in a self-contained folder.

    DIR/export.json        what was exported (format, folds, patch, classes, mirror axes, input/output names,
                           versions, and each fold's largest logit difference to eager PyTorch when checked)
    DIR/plans.json         the model's plans (preprocessing, patch size, labels)
    DIR/dataset.json       the dataset's dataset.json
    DIR/postprocessing.json   when smitunet_find_best_configuration chose one for the model
    DIR/fold_F/network.onnx | network.pt

``smitunet_predict -m DIR`` (``smitunet.inference.onnx_backend``) runs it with the same sliding window, mirroring
and fold averaging as the checkpoints. The network takes a batch of patches ``(B, C, *patch)`` (B free) and returns
logits ``(B, K, *patch)``; preprocessing and the softmax stay outside, as in the PyTorch path.

Everything that can be checked is checked before anything is written, and the folder is built under a temporary
name and renamed: a refused or failed export leaves nothing behind.
"""

from __future__ import annotations

import inspect
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from smitunet.checkpoint_io import load_training_checkpoint
from smitunet.errors import SmitunetError
from smitunet.inference.model_folder import TrainedModel
from smitunet.networks.registry import build_from_config
from smitunet.plans import Plans
from smitunet.postprocessing import POSTPROCESSING_FILE, load_postprocessing
from smitunet.utils.files import make_dirs, save_json
from smitunet.utils.log import logger

EXPORT_FORMATS = ("onnx", "torchscript")
NETWORK_FILES = {"onnx": "network.onnx", "torchscript": "network.pt"}
MANIFEST_FILE = "export.json"
MANIFEST_FORMAT = "smitunet_export"
MANIFEST_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_OPSET = 17
# An export whose logits differ from eager PyTorch by more than this on a random patch is refused: the graph was
# not traced faithfully. Float32 reorderings stay far below it (about 1e-5 for these networks).
VERIFY_ATOL = 1e-3


def _check_output(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise SmitunetError(f"{output_dir}: exists and is not an empty folder; export into a new folder")


class _Fold:
    def __init__(self, fold: str, network: torch.nn.Module, path: Path):
        self.fold, self.network, self.path = fold, network, path


def _load_folds(model: TrainedModel, folds: Sequence[str], checkpoint_name: str):
    """Every fold's network in eval mode, deep supervision off; one line for what cannot be exported."""
    loaded, reference = [], None
    for fold in folds:
        path = model.checkpoint(fold, checkpoint_name)
        ckpt = load_training_checkpoint(path)
        if reference is None:
            reference = ckpt
        elif ckpt.network != reference.network or ckpt.configuration != reference.configuration:
            raise SmitunetError(f"{path}: network or configuration differs from fold {folds[0]}; folds of one "
                                "model must share them")
        kwargs = dict(ckpt.network["kwargs"], deep_supervision=False)
        network = build_from_config(ckpt.network["name"], kwargs, ckpt.network.get("builder"))
        try:
            network.load_state_dict(ckpt.state_dict)
        except RuntimeError as exc:
            raise SmitunetError(f"{path}: the weights do not fit the network ({str(exc).splitlines()[0]})") from None
        network.eval()
        if hasattr(network, "deep_supervision"):
            network.deep_supervision = False
        loaded.append(_Fold(str(fold), network, path))
    plans = Plans.from_dict(reference.plans, source=f"{loaded[0].path} (plans)")
    config = plans.configuration(reference.configuration)
    patch = config.patch_size
    if config.previous_stage is not None:
        raise SmitunetError(f"{model.identifier}: {reference.configuration} is a cascade stage (its input includes the "
                            f"{config.previous_stage} segmentation); only single-stage configurations can be exported")
    if len(patch) != 3:
        raise SmitunetError(f"{model.identifier}: configuration {reference.configuration} has a "
                            f"{len(patch)}D patch {list(patch)}; only 3D configurations can be exported")
    return loaded, reference, plans, [int(p) for p in patch]


def _export_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, do_constant_folding=True)
    # The TorchScript-based exporter: it needs no onnxscript and exports these networks exactly; newer torch
    # defaults to the dynamo exporter, which is asked for explicitly not to be used.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about shapes fixed by design
        torch.onnx.export(network, (example,), str(path), **kwargs)


def _export_torchscript(network: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    # torch deprecates TorchScript in favour of torch.export (whose files need torch to run as well); it still
    # saves and loads, so the warnings say nothing the README does not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(network, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _reference_and_example(network, in_channels: int, patch: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    # Two patches: the export is checked with a batch other than the one it was traced with.
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((2, in_channels, *patch)).astype(np.float32))
    with torch.no_grad():
        reference = network(example)
    if isinstance(reference, (list, tuple)):
        reference = reference[0]
    return example, reference.numpy()


def _check_export(fmt: str, path: Path, example: torch.Tensor, reference: np.ndarray) -> float | None:
    """Largest |exported - eager| logit difference on ``example``; None when onnxruntime is absent."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            out = module(example).numpy()
    if out.shape != reference.shape:
        return float("inf")
    return float(np.abs(out - reference).max())


def export_model(model: TrainedModel, folds: Sequence[str], output_dir: str | Path, fmt: str = "onnx",
                 checkpoint_name: str = "final") -> Path:
    """Export ``folds`` of ``model`` into ``output_dir`` (a new or empty folder); returns it."""
    output_dir = Path(output_dir)
    if fmt not in EXPORT_FORMATS:
        raise SmitunetError(f"--format {fmt!r}: choose from {', '.join(EXPORT_FORMATS)}")
    if not folds:
        raise SmitunetError(f"{model.folder}: no fold to export")
    _check_output(output_dir)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (the exporter writes through it)
        except ImportError:
            raise SmitunetError("--format onnx needs the onnx package: pip install 'smitunet[onnx]'") from None
    loaded, reference, plans, patch = _load_folds(model, folds, checkpoint_name)

    make_dirs(output_dir.parent)
    tmp = output_dir.parent / f".{output_dir.name}.{secrets.token_hex(4)}.part"
    tmp.mkdir()
    differences: dict[str, float | None] = {}
    try:
        for fold in loaded:
            target = tmp / f"fold_{fold.fold}" / NETWORK_FILES[fmt]
            target.parent.mkdir()
            example, expected = _reference_and_example(fold.network, plans.num_channels, patch)
            try:
                (_export_onnx if fmt == "onnx" else _export_torchscript)(fold.network, example[:1], target)
            except Exception as exc:  # the exporters raise many types; the first line says what failed
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SmitunetError(f"{fold.path}: the network cannot be exported to {fmt} "
                                    f"({type(exc).__name__}: {message})") from None
            difference = _check_export(fmt, target, example, expected)
            if difference is not None and not difference <= VERIFY_ATOL:
                raise SmitunetError(f"{fold.path}: the {fmt} export differs from the PyTorch network by "
                                    f"{difference:.3g} (more than {VERIFY_ATOL}) on a test patch; not exported")
            differences[fold.fold] = difference
            logger.info(f"fold {fold.fold}: exported to {fmt}" + (
                f", largest logit difference to PyTorch {difference:.2e}" if difference is not None else
                " (not checked: onnxruntime is not installed)"))
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "network_format": fmt,
            "network_file": NETWORK_FILES[fmt], "folds": [f.fold for f in loaded], "model": model.identifier,
            "dataset": model.dataset, "trainer": model.trainer, "plans_name": model.plans,
            "configuration": reference.configuration, "checkpoint": checkpoint_name, "patch_size": patch,
            "in_channels": plans.num_channels, "num_classes": plans.num_classes,
            "mirror_axes": list(reference.inference_mirror_axes or []), "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME, "opset": ONNX_OPSET if fmt == "onnx" else None,
            "network": {"name": reference.network["name"], "builder": reference.network.get("builder")},
            "exported_with": {"torch": torch.__version__}, "max_abs_logit_difference": differences,
        }
        save_json(reference.plans, tmp / "plans.json")
        save_json(reference.dataset_json, tmp / "dataset.json")
        postprocessing = load_postprocessing(model.folder)
        if postprocessing is not None:
            save_json(postprocessing, tmp / POSTPROCESSING_FILE)
        save_json(manifest, tmp / MANIFEST_FILE)
        if output_dir.is_dir():  # empty (checked above): replaced by the finished folder
            output_dir.rmdir()
        os.rename(tmp, output_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise SmitunetError(f"{output_dir}: cannot write ({exc.strerror or exc}); nothing was exported") from None
        raise
    return output_dir

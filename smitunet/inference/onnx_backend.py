"""Predict with an exported folder (``smitunet_export``): ``smitunet_predict -m DIR --backend onnxruntime|torchscript``.

``ExportedModel`` stands where ``predictor.FoldEnsemble`` stands for checkpoints, so the ``Predictor`` reads,
preprocesses, ensembles, post-processes and writes exactly as it does for them. The sliding window here is the
PyTorch one's twin in numpy (same tiles, Gaussian weights, padding and mirroring), so that the ONNX Runtime hot
path (tiles in, logits out, accumulation, softmax) runs without torch; the TorchScript backend feeds the same
window through torch tensors.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from smitunet.errors import SmitunetError
from smitunet.inference.network_export import EXPORT_FORMATS, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION
from smitunet.inference.sliding_window import _gaussian_numpy, _mirror_combinations, tile_starts
from smitunet.plans import Plans
from smitunet.postprocessing import load_postprocessing
from smitunet.utils.files import load_json

BACKENDS = {"onnx": "onnxruntime", "torchscript": "torchscript"}  # export format -> the backend that runs it


def read_manifest(folder: str | Path) -> dict:
    """``export.json`` of an exported folder, checked; one line naming the folder otherwise."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise SmitunetError(f"{folder}: not found (an exported model folder from smitunet_export)")
    if not path.is_file():
        raise SmitunetError(f"{folder}: not an exported model folder (no {MANIFEST_FILE}); make one with "
                            "smitunet_export")
    manifest = load_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise SmitunetError(f"{path}: not a smitunet export manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise SmitunetError(f"{path}: export version {version!r} is newer than this smitunet reads "
                            f"({MANIFEST_VERSION}); update smitunet")
    missing = [k for k in ("network_format", "network_file", "folds", "configuration", "patch_size", "num_classes",
                           "in_channels", "mirror_axes", "input_name", "output_name") if k not in manifest]
    if missing or manifest["network_format"] not in EXPORT_FORMATS:
        raise SmitunetError(f"{path}: incomplete export manifest (missing {', '.join(missing) or 'a known format'})")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise SmitunetError(f"{folder / name}: missing; the exported folder is incomplete, export it again")
    return manifest


def _threads() -> int:
    """ONNX Runtime's intra-op threads: OMP_NUM_THREADS when set (as for torch on a shared machine), else 0 (its
    default: one per physical core)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def _onnx_runner(path: Path, manifest: dict, device: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise SmitunetError("--backend onnxruntime needs onnxruntime: pip install 'smitunet[onnx]'") from None
    available = ort.get_available_providers()
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device == "auto":
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    elif device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise SmitunetError(f"--device {device}: this onnxruntime has no CUDA provider (install "
                                "onnxruntime-gpu); use --device cpu")
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        raise SmitunetError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the provider notes would be printed for every fold
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own error types; a damaged or foreign file
        raise SmitunetError(f"{path}: ONNX Runtime cannot load it ({str(exc).strip().splitlines()[0]})") from None
    inputs, outputs = [manifest["input_name"]], [manifest["output_name"]]

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(outputs, {inputs[0]: batch})[0]

    return run, f"onnxruntime {session.get_providers()[0]}"


def _torchscript_runner(path: Path, device: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import torch

    from smitunet.utils.device import resolve_device

    target = resolve_device(device)
    try:
        # A TorchScript archive holds the network's code as well as its weights: load folders you trust, as for
        # any program. (torch.load's weights_only does not apply to this format.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated by torch, still works
            module = torch.jit.load(str(path), map_location=target).eval()
    except Exception as exc:
        raise SmitunetError(f"{path}: TorchScript cannot load it ({str(exc).strip().splitlines()[0]})") from None

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(batch).to(target))
        return out.float().cpu().numpy()

    return run, f"torchscript {target}"


def sliding_window_numpy(run: Callable[[np.ndarray], np.ndarray], data: np.ndarray, patch_size: Sequence[int],
                         num_classes: int, step_size: float = 0.5, mirror_axes: Sequence[int] | None = (0, 1, 2),
                         tile_batch_size: int = 1, stats: dict | None = None,
                         progress: bool | None = None) -> np.ndarray:
    """Logits (num_classes, z, y, x) float32 of ``data`` (C, z, y, x): ``predict_sliding_window`` with
    ``run(batch (B, C, *patch)) -> (B, K, *patch)`` in place of the module. The mirrored copies of a tile batch go
    through ``run`` in one call (one batch of tiles x mirrorings)."""
    patch_size = tuple(int(p) for p in patch_size)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 4:
        raise ValueError(f"expected data (C, z, y, x), got shape {data.shape}")
    pads, crop = [], [slice(None)]
    for size, patch in zip(data.shape[1:], patch_size):  # centred zero padding up to the patch, as the torch path
        total = max(0, patch - size)
        pads.append((total // 2, total - total // 2))
        crop.append(slice(total // 2, total // 2 + size))
    if any(p for pair in pads for p in pair):
        data = np.pad(data, [(0, 0), *pads])
    spatial = data.shape[1:]
    logits = np.zeros((num_classes, *spatial), dtype=np.float32)
    weights = np.zeros(spatial, dtype=np.float32)
    tile_weight = _gaussian_numpy(patch_size)
    combos = _mirror_combinations(mirror_axes)
    starts = tile_starts(spatial, patch_size, step_size)
    slicers = [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in itertools.product(*starts)]
    forward_seconds = 0.0
    show = sys.stderr.isatty() if progress is None else progress
    for i in tqdm(range(0, len(slicers), tile_batch_size), disable=not show, desc="tiles", leave=False):
        chunk = slicers[i:i + tile_batch_size]
        batch = np.stack([data[(slice(None), *s)] for s in chunk])
        inputs = np.concatenate([np.flip(batch, dims) if dims else batch for dims in combos])
        t0 = time.perf_counter()
        out = run(np.ascontiguousarray(inputs))
        forward_seconds += time.perf_counter() - t0
        if out.shape[1] != num_classes:
            raise ValueError(f"model returned {out.shape[1]} channels, expected num_classes={num_classes}")
        total = None
        for k, dims in enumerate(combos):  # summed in the torch path's order
            y = out[k * len(chunk):(k + 1) * len(chunk)]
            y = np.flip(y, dims) if dims else y
            total = y.astype(np.float32) if total is None else total + y
        pred = total / len(combos) * tile_weight
        for j, s in enumerate(chunk):
            logits[(slice(None), *s)] += pred[j]
            weights[s] += tile_weight
    logits /= weights
    if stats is not None:
        stats["tiles"] = stats.get("tiles", 0) + len(slicers)
        stats["forward_passes"] = stats.get("forward_passes", 0) + len(slicers) * len(combos)
        stats["forward_seconds"] = stats.get("forward_seconds", 0.0) + forward_seconds
    return logits[tuple(crop)]


def activate_numpy(logits: np.ndarray, plans: Plans, slab: int = 16) -> None:
    """``export.activate`` in numpy: softmax over classes (sigmoid per region) in place, slab by slab along z."""
    for z in range(0, logits.shape[1], slab):
        part = logits[:, z:z + slab]
        if plans.has_regions:
            np.negative(part, out=part)
            np.exp(part, out=part)
            part += 1
            np.reciprocal(part, out=part)
            continue
        part -= part.max(0, keepdims=True)
        np.exp(part, out=part)
        part /= part.sum(0, keepdims=True)


class ExportedModel:
    """The folds of one exported folder; what ``Predictor`` needs of a model (``plans``, ``configuration``,
    ``predict_probabilities``)."""

    def __init__(self, folder: str | Path, folds: Sequence[str] | None = None, backend: str | None = None,
                 device: str = "auto"):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.manifest = manifest
        fmt = manifest["network_format"]
        if backend is not None and backend != BACKENDS[fmt]:
            raise SmitunetError(f"{self.folder}: exported as {fmt}, which runs with --backend {BACKENDS[fmt]}, not "
                                f"{backend}")
        self.backend = BACKENDS[fmt]
        exported = [str(f) for f in manifest["folds"]]
        self.folds = [str(f) for f in folds] if folds else exported
        missing = [f for f in self.folds if f not in exported]
        if missing:
            raise SmitunetError(f"{self.folder}: fold(s) {', '.join(missing)} were not exported; exported folds: "
                                f"{', '.join(exported)}")
        self.plans = Plans.from_dict(load_json(self.folder / "plans.json"), source=str(self.folder / "plans.json"))
        self.configuration = manifest["configuration"]
        self.config_plan = self.plans.configuration(self.configuration)
        self.previous_stage = None  # cascades are not exported (network_export refuses them)
        self.mirror_axes = tuple(manifest["mirror_axes"] or ())
        self.patch_size = [int(p) for p in manifest["patch_size"]]
        if self.plans.num_classes != manifest["num_classes"]:
            raise SmitunetError(f"{self.folder}: plans.json has {self.plans.num_classes} classes, the exported "
                                f"network {manifest['num_classes']}; export it again")
        self.runners = []
        for fold in self.folds:
            path = self.folder / f"fold_{fold}" / manifest["network_file"]
            if not path.is_file():
                raise SmitunetError(f"{path}: missing; the exported folder is incomplete, export it again")
            run, self.device = (_onnx_runner(path, manifest, device) if fmt == "onnx"
                                else _torchscript_runner(path, device))
            self.runners.append(run)

    @property
    def identifier(self) -> str:
        return f"{self.folder} ({self.manifest.get('model', '?')}, {self.manifest['network_format']})"

    @property
    def num_classes(self) -> int:
        return self.plans.num_classes

    def postprocessing(self) -> dict | None:
        return load_postprocessing(self.folder)

    def predict_probabilities(self, data: np.ndarray, options) -> np.ndarray:
        """Mean probabilities over the folds, float32 (K, z, y, x), in the preprocessed space (as
        ``FoldEnsemble.predict_probabilities``)."""
        tile_batch = options.tile_batch_size or 1
        mean = None
        for run in self.runners:
            logits = sliding_window_numpy(run, data, self.patch_size, self.num_classes, options.step_size,
                                          self.mirror_axes if options.use_tta else None, tile_batch,
                                          stats=options.stats, progress=options.progress)
            activate_numpy(logits, self.plans)
            mean = logits if mean is None else np.add(mean, logits, out=mean)
            del logits
        mean /= len(self.runners)
        return mean

"""Unlabelled images for pretraining: where they come from and how they are preprocessed (once).

Sources: raw datasets (``-d``: ``imagesTr`` and ``imagesTs``, labels ignored) and folders (``-i``: image files in
any SimpleITK format, and sub-folders holding one DICOM series each). Every image goes through the fine-tuning
side's ``preprocess_case`` (crop to nonzero, per-channel normalisation, resampling to the target spacing), with
either the fine-tuning plans (``--plans``: identical preprocessing) or settings derived here: median spacing of
the images, CT clipped to the 0.5-99.5 % percentiles of the images' nonzero voxels and scaled by their mean/std,
other modalities z-scored per image.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from smitunet.dataset.integrity import read_checked_volume
from smitunet.dataset.raw import list_test_cases, load_dataset_json
from smitunet.errors import BadInputError, SmitunetError
from smitunet.imageio import image_ending, read_sitk
from smitunet.paths import raw_dir, resolve_dataset_name
from smitunet.plans import ConfigurationPlan, NetworkConfig, Plans
from smitunet.preprocessing.fingerprint import intensity_statistics
from smitunet.preprocessing.normalization import scheme_for_channel
from smitunet.preprocessing.preprocessor import preprocess_case
from smitunet.utils.files import save_npy
from smitunet.utils.log import logger

PRETRAIN_CONFIGURATION = "pretraining"
CT_SAMPLES_PER_IMAGE = 10_000


@dataclass
class ImageSource:
    name: str
    paths: list[Path]  # one file per channel, or one DICOM series folder


def _warn(message: str) -> None:
    logger.warning(f"warning: {message}")


def dataset_sources(identifier: str) -> tuple[list[ImageSource], dict[str, str]]:
    """Every image of a raw dataset (``imagesTr``, ``imagesTs`` and ``imagesUnlabelled``); labels are not read."""
    name = resolve_dataset_name(identifier, search=("raw",))
    folder = raw_dir() / name
    dj = load_dataset_json(folder)
    sources: list[ImageSource] = []
    for sub in ("imagesTr", "imagesTs", "imagesUnlabelled"):
        cases, problems = list_test_cases(folder, dj, folder=sub)
        for p in problems:
            _warn(f"{name}: {p}")
        sources += [ImageSource(f"{name}/{sub}/{case}", list(c["images"])) for case, c in sorted(cases.items())]
    if not sources:
        raise SmitunetError(f"{folder}: no images found in imagesTr/ or imagesTs/")
    return sources, {str(k): str(v) for k, v in dj["channel_names"].items()}


def folder_sources(folder: str | Path) -> list[ImageSource]:
    """Image files of a folder, each of its sub-folders as a DICOM series, or the folder itself as one series."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SmitunetError(f"{folder}: image folder not found")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and image_ending(p)]
    series = [p for p in entries if p.is_dir()]
    sources = [ImageSource(str(p), [p]) for p in files + series]
    if not sources and any(p.is_file() for p in entries):
        sources = [ImageSource(str(folder), [folder])]  # a folder of DICOM slices
    if not sources:
        raise SmitunetError(f"{folder}: holds no images (files with {', '.join(('.nii.gz', '.nrrd', '.mha'))} ... "
                            "or DICOM series folders)")
    return sources


def collect_sources(datasets: Sequence[str], folders: Sequence[str | Path], folder_modality: str
                    ) -> tuple[list[ImageSource], dict[str, str]]:
    """All sources and the channel names they share (folders are single-channel ``folder_modality``)."""
    sources: list[ImageSource] = []
    channels: dict[str, str] | None = None
    for identifier in datasets:
        found, names = dataset_sources(identifier)
        if channels is not None and len(names) != len(channels):
            raise SmitunetError(f"dataset {identifier}: {len(names)} channel(s), but other inputs have {len(channels)}")
        channels = channels or names
        sources += found
    for folder in folders:
        if channels is not None and len(channels) != 1:
            raise SmitunetError(f"{folder}: folder images are single-channel, the datasets have {len(channels)}")
        channels = channels or {"0": folder_modality}
        sources += folder_sources(folder)
    if not sources:
        raise SmitunetError("no input images: give raw datasets with -d and/or image folders with -i")
    return sources, channels


def check_sources(sources: list[ImageSource]) -> dict[str, str]:
    """--strict: read and check every image first; the faults by source name (each also logged, one line)."""
    failed = {}
    for source in tqdm(sources, desc="checking images", disable=not sys.stderr.isatty()):
        try:
            read_checked_volume(source.name, source.paths)
        except BadInputError as exc:
            _warn(f"bad input: {exc}")
            failed[source.name] = str(exc)
    return failed


def _spacing_zyx(source: ImageSource) -> list[float]:
    path = source.paths[0]
    if path.is_dir():
        return list(reversed(read_sitk(path).GetSpacing()))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SmitunetError(f"{path}: cannot be read as an image") from None
    return [float(s) for s in reversed(reader.GetSpacing())]


def _ct_statistics(sources: list[ImageSource], channels: list[int], seed: int) -> dict[str, dict[str, float]]:
    """Per CT channel: intensity statistics of nonzero voxels sampled from every image (no labels to use)."""
    rng = np.random.default_rng(seed)
    samples: dict[int, list[np.ndarray]] = {c: [] for c in channels}
    for source in tqdm(sources, desc="CT intensity statistics", disable=not sys.stderr.isatty()):
        try:
            data, _ = read_checked_volume(source.name, source.paths)
        except BadInputError:
            continue  # left out of the statistics; reported once, when preprocess_sources skips it
        for c in channels:
            values = data[c][data[c] != 0]
            if values.size:
                samples[c].append(rng.choice(values, min(CT_SAMPLES_PER_IMAGE, values.size), replace=False))
    return {str(c): intensity_statistics(np.concatenate(samples[c]) if samples[c] else np.zeros(1)) for c in channels}


def derived_plans(sources: list[ImageSource], channel_names: dict[str, str], spacing: Sequence[float] | None,
                  network: NetworkConfig, seed: int = 0) -> Plans:
    """Plans holding only what ``preprocess_case`` needs, derived from the images themselves."""
    if spacing is None:
        spacings = []
        for s in sources:
            try:
                spacings.append(_spacing_zyx(s))
            except SmitunetError:
                continue  # an unreadable image: reported (and skipped) by preprocess_sources
        if not spacings:
            raise SmitunetError("none of the input images can be read")
        spacing = np.median(np.array(spacings), axis=0).tolist()
    schemes = [scheme_for_channel(channel_names[str(c)]) for c in range(len(channel_names))]
    ct = [c for c, s in enumerate(schemes) if s == "CT"]
    config = ConfigurationPlan(
        data_identifier=PRETRAIN_CONFIGURATION, spacing=[float(s) for s in spacing],
        patch_size=list(network.kwargs["patch_size"]), batch_size=1, median_image_shape=[1, 1, 1],
        normalization=schemes, use_mask_for_norm=[False] * len(schemes), network=network)
    return Plans(dataset_name="pretraining", plans_name="pretraining", channel_names=dict(channel_names),
                 labels={"background": 0}, file_ending=".nii.gz", original_median_spacing=list(config.spacing),
                 original_median_shape=[1, 1, 1],
                 foreground_intensity_properties=_ct_statistics(sources, ct, seed) if ct else {},
                 configurations={PRETRAIN_CONFIGURATION: config})


def _cache_key(source: ImageSource, plans: Plans, configuration: str) -> str:
    cfg = plans.configuration(configuration)
    text = json.dumps([[str(p.resolve()) for p in source.paths], cfg.spacing, cfg.normalization,
                       cfg.use_mask_for_norm, plans.foreground_intensity_properties], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def preprocess_sources(sources: list[ImageSource], plans: Plans, configuration: str,
                       cache_dir: Path | None = None, show_progress: bool = True,
                       failed: dict[str, str] | None = None) -> list[np.ndarray]:
    """Preprocessed float32 (C, z, y, x) volumes: in memory, or memory-mapped from ``cache_dir`` (reused).

    An image that fails the checks (``read_checked_volume``: unreadable, truncated, NaN/Inf, single slice, channel
    geometry) is one warning line and left out; ``failed`` collects them by source name."""
    volumes = []
    for source in tqdm(sources, desc="preprocessing", disable=not (show_progress and sys.stderr.isatty())):
        cached = cache_dir / f"{_cache_key(source, plans, configuration)}.npy" if cache_dir else None
        if cached is not None and cached.is_file():
            volumes.append(np.load(cached, mmap_mode="r"))
            continue
        try:
            data, geometry = read_checked_volume(source.name, source.paths)
        except BadInputError as exc:
            _warn(f"skipped: {exc}")
            if failed is not None:
                failed[source.name] = str(exc)
            continue
        if data.shape[0] != plans.num_channels:
            raise SmitunetError(f"{source.name}: {data.shape[0]} channel(s), expected {plans.num_channels}")
        out, _, _ = preprocess_case(data, geometry, plans, configuration)
        if cached is not None:
            save_npy(out, cached)
            out = np.load(cached, mmap_mode="r")
        volumes.append(out)
    if not volumes:
        raise SmitunetError(f"none of the {len(sources)} input image(s) can be used (see the lines above)")
    return volumes

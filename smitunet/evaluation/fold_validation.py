"""Fold validation: sliding-window prediction of the held-out cases, exported at their original geometry.

Predictions go to ``fold_F/validation/{case}{file_ending}`` (``--npz`` adds the softmax probabilities), written
by the prediction stage's ``export_case`` (restore_original_geometry + imageio.write_image), and
``summary.json`` holds per-case, per-class and mean metrics against the raw labels. When the raw dataset is
not available, the reference is the preprocessed segmentation restored to the original geometry (stated in
the summary as ``"reference": "preprocessed"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smitunet.evaluation.metrics import case_metrics, foreground_mean, mean_metrics
from smitunet.contracts import CaseProperties
from smitunet.imageio import read_image
from smitunet.inference.export import activate, export_case, resample_to_next_stage
from smitunet.inference.sliding_window import predict_sliding_window, tile_batch_default
from smitunet.plans import Plans
from smitunet.preprocessing.case_arrays import data_file, load_case_array, seg_file
from smitunet.preprocessing.cascade import append_previous_stage, load_previous_stage, previous_stage_file
from smitunet.preprocessing.preprocessor import restore_original_geometry
from smitunet.utils.files import json_safe, make_dirs, save_json, save_npy


def raw_label_files(dataset_name: str) -> dict[str, Path]:
    """case -> raw label path, or {} when the raw dataset is not on this machine."""
    from smitunet.dataset.raw import list_training_cases
    from smitunet.paths import raw_dir

    folder = raw_dir() / dataset_name
    if not (folder / "dataset.json").is_file():
        return {}
    return {case: Path(entry["label"]) for case, entry in list_training_cases(folder).items()}


def predict_case(network, plans: Plans, configuration: str, data_folder: Path, case: str, device: torch.device,
                 mirror_axes, previous_stage_folder: Path | None = None) -> tuple[np.ndarray, dict]:
    """Probabilities (K, z, y, x; softmax, or sigmoid per region) in the preprocessed space, and the case's
    properties. A cascade reads the previous stage's segmentation of the case from ``previous_stage_folder``."""
    data = load_case_array(data_file(data_folder, case))
    if plans.configuration(configuration).previous_stage is not None:
        previous = load_previous_stage(previous_stage_folder, case)
        data = append_previous_stage(data, previous[0], plans.foreground_labels)
    properties = CaseProperties.load(data_folder / f"{case}.json").to_dict()
    config = plans.configuration(configuration)
    logits = predict_sliding_window(network, torch.from_numpy(data), config.patch_size, plans.num_classes,
                                    step_size=0.5, mirror_axes=mirror_axes, device=device,
                                    tile_batch_size=tile_batch_default(config, device),
                                    output_device="cpu", progress=False,
                                    autocast_dtype=torch.float16 if device.type == "cuda" else None)
    logits = logits.float()
    activate(logits, plans)
    return logits.numpy(), properties


def reference_labels(plans: Plans, configuration: str, data_folder: Path, case: str, properties: dict,
                     raw_labels: dict[str, Path]) -> np.ndarray:
    if case in raw_labels:
        return read_image(raw_labels[case])[0]
    seg = load_case_array(seg_file(data_folder, case))[0]
    return restore_original_geometry(seg, properties, plans, configuration, is_seg=True)


def validate_fold(network, plans: Plans, configuration: str, data_folder: Path, cases: list[str], folder: Path,
                  device: torch.device, mirror_axes=(0, 1, 2), save_probabilities: bool = False,
                  about: dict | None = None, previous_stage_folder: Path | None = None,
                  next_stage_folder: Path | None = None) -> dict:
    """Predict every case, write the predictions and ``summary.json`` into ``folder``; returns the summary.

    ``about`` (fold, trainer, epochs, ...) is copied into the summary. ``previous_stage_folder``: a cascade's
    input segmentations. ``next_stage_folder`` (``predicted_next_stage``): each case's segmentation is also
    written, in the preprocessed geometry of every configuration that cascades from this one, to
    ``{next_stage_folder}/{next configuration}/{case}.npy`` (int16 (1, z, y, x)), as nnU-Net does: after the
    five folds every training case has an out-of-fold one to train the cascade on.
    """
    folder = Path(folder)
    make_dirs(folder)
    network.eval()
    network.deep_supervision = False
    raw_labels = raw_label_files(plans.dataset_name)
    labels = plans.evaluated_labels  # foreground labels, or regions (scored as the union of their values)
    per_case = []
    for case in tqdm(cases, desc="fold validation", disable=None):
        probabilities, properties = predict_case(network, plans, configuration, data_folder, case, device, mirror_axes,
                                                 previous_stage_folder)
        for next_configuration in plans.next_stages(configuration) if next_stage_folder is not None else ():
            segmentation = resample_to_next_stage(probabilities, properties, plans, configuration, next_configuration)
            save_npy(segmentation[None], previous_stage_file(Path(next_stage_folder) / next_configuration, case))
        output = folder / f"{case}{plans.file_ending}"
        # The prediction stage's export: same label mapping and geometry restoration as smitunet_predict.
        export_case(probabilities, properties, plans, configuration, output, postprocessing=None,
                    save_probabilities=save_probabilities)
        segmentation, geometry = read_image(output)
        reference = reference_labels(plans, configuration, data_folder, case, properties, raw_labels)
        metrics = case_metrics(segmentation, reference, labels, geometry.spacing_zyx,
                               ignore_label=plans.ignore_label)
        per_case.append({"case": case, "metrics": metrics})
    means = mean_metrics([c["metrics"] for c in per_case])
    summary = {**(about or {}), "reference": "raw" if raw_labels else "preprocessed",
               "foreground_mean": foreground_mean(means), "mean": means, "metric_per_case": per_case}
    save_json(json_safe(summary), folder / "summary.json")  # NaN (no structure in a case) -> null
    return summary

"""Turn averaged probabilities in the preprocessed space into label files in the input's exact geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from smitunet.postprocessing import apply_postprocessing
from smitunet.imageio import Geometry, write_image
from smitunet.plans import Plans
from smitunet.utils.files import save_npz


def label_lookup(plans: Plans) -> np.ndarray:
    """Network output channel i -> label value (the plans' label values, sorted; identity when consecutive)."""
    values = sorted(int(v) for v in plans.segmentation_labels.values())
    dtype = np.uint8 if max(values) < 256 else np.int16
    return np.asarray(values, dtype=dtype)


def regions_to_labels(probabilities: np.ndarray, regions_class_order: list[int],
                      threshold: float = 0.5) -> np.ndarray:
    """Region probabilities (R, z, y, x) -> a label map, as nnU-Net v2: region by region in order, every voxel
    where the region's probability exceeds ``threshold`` gets the region's class value (later regions paint over
    earlier ones, so nested regions go from the outermost to the innermost)."""
    dtype = np.uint8 if max(regions_class_order, default=0) < 256 else np.int16
    labels = np.zeros(probabilities.shape[1:], dtype=dtype)
    for region, value in enumerate(regions_class_order):
        labels[probabilities[region] > threshold] = value
    return labels


def probabilities_to_segmentation(probabilities: np.ndarray, plans: Plans) -> np.ndarray:
    """Label values (z, y, x) from the network's probabilities: arg-max (softmax) or regions (sigmoid)."""
    if plans.has_regions:
        return regions_to_labels(probabilities, plans.regions_class_order)
    return label_lookup(plans)[argmax_int16(probabilities)]


def activate(logits: torch.Tensor, plans: Plans, slab: int = 16) -> None:
    """Logits (K, z, y, x) -> probabilities in place: sigmoid per region, else softmax over the class axis, slab
    by slab along z (no extra full-volume temporaries)."""
    for z in range(0, logits.shape[1], slab):
        part = logits[:, z:z + slab]
        if plans.has_regions:
            part.sigmoid_()
            continue
        part.sub_(part.max(0, keepdim=True).values)
        part.exp_()
        part.div_(part.sum(0, keepdim=True))


def argmax_int16(probabilities: np.ndarray, slab: int = 16) -> np.ndarray:
    """Arg-max over classes, slab by slab along z: no int64 (z, y, x) temporary of the whole volume."""
    out = np.empty(probabilities.shape[1:], dtype=np.int16)
    for z in range(0, out.shape[0], slab):
        out[z:z + slab] = probabilities[:, z:z + slab].argmax(0)
    return out


def needs_resampling(properties: dict) -> bool:
    return not np.allclose(properties["spacing_original"], properties["spacing_target"], rtol=0, atol=1e-6)


def probabilities_to_labels(probabilities: np.ndarray, properties: dict, plans: Plans, configuration: str,
                            keep_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (original z, y, x) and, if asked, the probabilities in the original geometry.

    Without resampling, undoing the crop commutes with the argmax, so only a (z, y, x) array is restored;
    otherwise the probabilities are resampled back (as nnU-Net does), then arg-maxed.
    """
    from smitunet.preprocessing.preprocessor import restore_original_geometry

    if plans.has_regions:
        # thresholds do not commute with resampling: restore the probabilities first, then paint the regions
        if not keep_probabilities and not needs_resampling(properties):
            segmentation = probabilities_to_segmentation(probabilities, plans)
            return restore_original_geometry(segmentation, properties, plans, configuration,
                                             is_seg=True).astype(segmentation.dtype), None
        restored = np.asarray(restore_original_geometry(probabilities, properties, plans, configuration,
                                                        is_seg=False), dtype=np.float32)
        return probabilities_to_segmentation(restored, plans), (restored if keep_probabilities else None)
    lookup = label_lookup(plans)
    if not keep_probabilities and not needs_resampling(properties):
        restored_index = restore_original_geometry(argmax_int16(probabilities), properties, plans, configuration,
                                                   is_seg=True)
        return lookup[restored_index], None
    restored = np.asarray(restore_original_geometry(probabilities, properties, plans, configuration, is_seg=False),
                          dtype=np.float32)
    labels = lookup[argmax_int16(restored)]
    return labels, (restored if keep_probabilities else None)


def resample_to_next_stage(probabilities: np.ndarray, properties: dict, plans: Plans, configuration: str,
                           next_configuration: str, shape=None) -> np.ndarray:
    """int16 (z, y, x) labels of a previous stage's probabilities (K, z, y, x) in ``next_configuration``'s
    preprocessed geometry (``shape``, else computed from the properties): resampled linearly, then labelled
    (as nnU-Net resamples a 3d_lowres prediction for its cascade). Both stages crop the same box."""
    from smitunet.preprocessing.cascade import preprocessed_shape
    from smitunet.preprocessing.resampling import resample_probabilities, separate_axis

    current, target = plans.configuration(configuration), plans.configuration(next_configuration)
    shape = list(shape) if shape is not None else preprocessed_shape(properties, target.spacing)
    axis = separate_axis(current.spacing, target.spacing, target.anisotropy_threshold)
    resampled = resample_probabilities(np.asarray(probabilities, dtype=np.float32), shape, axis)
    return probabilities_to_segmentation(resampled, plans).astype(np.int16)


def export_case(probabilities: np.ndarray, properties: dict, plans: Plans, configuration: str,
                output_file: Path, postprocessing: dict | None, save_probabilities: bool,
                before_labels: Callable[[np.ndarray, Geometry], None] | None = None) -> None:
    """Write ``output_file`` (and ``{case}.npz`` with ``probabilities`` (K, z, y, x)) atomically.

    ``before_labels(labels, geometry)`` writes further outputs of the case (e.g. DICOM) before the label file."""
    geometry = Geometry.from_dict(properties["geometry"])
    labels, restored = probabilities_to_labels(probabilities, properties, plans, configuration, save_probabilities)
    labels = apply_postprocessing(np.ascontiguousarray(labels), postprocessing)
    if save_probabilities:
        # probabilities first: a case counts as finished once its label file exists
        save_npz(probability_file(output_file), compressed=True, probabilities=restored)
    if before_labels is not None:
        before_labels(labels, geometry)
    write_image(labels, geometry, output_file)


def probability_file(output_file: Path) -> Path:
    name = output_file.name
    for ending in (".nii.gz", ".gipl.gz"):
        if name.endswith(ending):
            return output_file.with_name(name[: -len(ending)] + ".npz")
    return output_file.with_suffix(".npz")

"""A raw dataset and fold-validation predictions written directly: inputs of model ranking and ensembling."""

from __future__ import annotations

import numpy as np

from smitunet.imageio import Geometry, write_image
from smitunet.utils.files import save_json

GEO = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 16, 16))
NAME = "Dataset990_Tiny"


def raw_dataset(raw, n=4):
    folder = raw / NAME
    refs = {}
    for i in range(n):
        ref = np.zeros(GEO.shape_zyx, np.uint8)
        ref[2:7, 2:7, 2 + i:7 + i] = 1
        ref[9:13, 9:13, 9:13] = 2
        write_image(ref, GEO, folder / "labelsTr" / f"c{i}.nii.gz")
        write_image(ref.astype(np.float32), GEO, folder / "imagesTr" / f"c{i}_0000.nii.gz")
        refs[f"c{i}"] = ref
    save_json({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n,
               "file_ending": ".nii.gz"}, folder / "dataset.json")
    return refs


def validation_predictions(model_dir, refs, shrink, stray, folds=2):
    for i, (case, ref) in enumerate(refs.items()):
        pred = ref.copy()
        pred[9:9 + shrink] = np.where(pred[9:9 + shrink] == 2, 0, pred[9:9 + shrink])  # worse label-2 boundary
        if stray:
            pred[0, 15, 15] = 1
        write_image(pred, GEO, model_dir / f"fold_{i % folds}" / "validation" / f"{case}.nii.gz")

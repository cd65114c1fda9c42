"""``smitunet.api`` runs the whole pipeline with no CLI involved: plan -> train -> predict (folder and array) ->
evaluate, on generated data."""

from __future__ import annotations

import numpy as np

from smitunet import api
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.imageio import read_channels, read_image
from smitunet.inference.predictor import PredictionOptions


def test_plan_train_predict_evaluate_through_the_api(smitunet_dirs, tmp_path, capsys, monkeypatch):
    from smitunet.utils.log import logger

    monkeypatch.setattr(logger, "handlers", [])  # as a library user without logging set up (a CLI test may have)
    dataset = generate_synthetic_dataset(smitunet_dirs["raw"], num_training=6, num_test=2, shape=(20, 24, 22))
    (plans,) = api.plan_and_preprocess([999], preset="smit_tiny", num_processes=1)
    assert plans.dataset_name == "Dataset999_Synthetic" and "3d_fullres" in plans.configurations
    summary = api.train(999, "3d_fullres", 0, epochs=2, iters_per_epoch=4, num_workers=0, disable_tta=True,
                        device="cpu")
    assert summary["fold"] == 0 and summary["epochs"] == 2 and 0.0 <= summary["foreground_mean"]["dice"] <= 1.0
    options = PredictionOptions(use_tta=False, device="cpu", num_processes=0)
    written = api.predict(dataset / "imagesTs", tmp_path / "preds", dataset=999, options=options)
    assert sorted(p.name for p in written) == sorted(p.name for p in (dataset / "labelsTs").iterdir())
    scores = api.evaluate(dataset / "labelsTs", tmp_path / "preds")
    assert scores["num_cases"] == 2
    # An array in, labels out: the same labels as the file written for that case, nothing written.
    case = sorted((dataset / "imagesTs").iterdir())[0]
    image, geometry = read_channels([case])
    labels = api.predict(image, dataset=999, geometry=geometry, options=options)
    written_labels, _ = read_image(tmp_path / "preds" / case.name.replace("_0000", ""))
    np.testing.assert_array_equal(labels, written_labels)
    assert capsys.readouterr().out == ""  # library calls print nothing; messages go to the logger

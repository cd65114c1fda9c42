import json

import numpy as np
import pytest

from smitunet.errors import SmitunetError
from smitunet.evaluation.best_configuration import find_best, main as best_main
from smitunet.imageio import write_image
from smitunet.inference.cli import main as predict_main
from smitunet.inference.predictor import Predictor
from support.crossval import GEO, NAME, raw_dataset as _raw_dataset, validation_predictions as _validation
from support.prediction import save_tiny_model, tiny_plans


def test_ranks_models_writes_postprocessing_and_predict_uses_the_best(smitunet_dirs, tmp_path, capsys):
    refs = _raw_dataset(smitunet_dirs["raw"])
    good = save_tiny_model(smitunet_dirs["results"], tiny_plans(dataset_name=NAME), folds=(0, 1), trainer="Good")
    bad = save_tiny_model(smitunet_dirs["results"], tiny_plans(dataset_name=NAME), folds=(0, 1), trainer="Bad")
    _validation(good, refs, shrink=0, stray=True)
    _validation(bad, refs, shrink=2, stray=False)
    best_main(["990", "-f", "0", "1"])
    out = capsys.readouterr().out
    assert "best: Good__smitunetPlans__3d_fullres" in out and "labels: 1" in out
    info = json.loads((smitunet_dirs["results"] / NAME / "inference_information.json").read_text())
    assert info["best"]["trainer"] == "Good" and info["postprocessing"]["keep_largest_component"] == [1]
    assert {c["trainer"] for c in info["candidates"]} == {"Good", "Bad"}
    assert info["candidates"][0]["dice"] != info["candidates"][1]["dice"]
    # the pair was evaluated too (probabilities predicted from the raw images, no --npz output) and lost
    assert len(info["ensembles"]) == 1 and info["ensembles"][0]["dice"] < info["best"]["dice"]
    assert (good / "fold_1" / "validation" / "c1.npz").is_file()
    assert json.loads((good / "postprocessing.json").read_text())["keep_largest_component"] == [1]
    assert Predictor.from_model_folder(good, ["0"]).postprocessing["keep_largest_component"] == [1]
    # with two trained models, -d alone picks the one find_best_configuration chose
    write_image(np.zeros(GEO.shape_zyx, np.float32), GEO, tmp_path / "in" / "x_0000.nii.gz")
    predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "990", "--disable_tta"])
    settings = json.loads((tmp_path / "out" / "prediction_settings.json").read_text())
    assert settings["model"].endswith("Good__smitunetPlans__3d_fullres")
    assert settings["postprocessing"]["keep_largest_component"] == [1]


def test_incomplete_folds_are_reported(smitunet_dirs):
    refs = _raw_dataset(smitunet_dirs["raw"])
    model = save_tiny_model(smitunet_dirs["results"], tiny_plans(dataset_name=NAME), folds=(0,))
    _validation(model, refs, shrink=0, stray=False, folds=1)  # only fold_0 has predictions
    with pytest.raises(SmitunetError, match="no model has validation predictions for folds 0, 1.*incomplete"):
        find_best("990", folds=("0", "1"))
    info = find_best("990", folds=("0",))
    assert info["best"]["dice"] == 1.0 and info["best"]["num_cases"] == 4


def test_disable_ensembling_ranks_single_models_only(smitunet_dirs):
    refs = _raw_dataset(smitunet_dirs["raw"], n=2)
    for trainer, shrink in (("Good", 0), ("Bad", 2)):
        model = save_tiny_model(smitunet_dirs["results"], tiny_plans(dataset_name=NAME), folds=(0, 1), trainer=trainer)
        _validation(model, refs, shrink=shrink, stray=False)
    best_main(["990", "-f", "0", "1", "--disable_ensembling"])
    info = json.loads((smitunet_dirs["results"] / NAME / "inference_information.json").read_text())
    assert info["ensembles"] == [] and info["best"]["trainer"] == "Good" and info["best"]["dice"] == 1.0
    assert not list(smitunet_dirs["results"].rglob("*.npz"))
    assert not (smitunet_dirs["results"] / NAME / "ensembles").exists()

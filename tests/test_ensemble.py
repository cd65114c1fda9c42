"""Ensembles of two trained models: cross-validation choice in find_best_configuration and prediction."""

import json
import os

import numpy as np
import pytest

from smitunet.dataset.raw import list_training_cases
from smitunet.errors import SmitunetError
from smitunet.evaluation.best_configuration import find_best
from smitunet.evaluation.best_configuration import ensure_probabilities
from smitunet.imageio import read_image, write_image
from smitunet.inference.cli import main as predict_main
from smitunet.inference.predictor import PredictionOptions, Predictor
from smitunet.utils.files import save_npz
from support.crossval import GEO, NAME, raw_dataset as _raw_dataset, validation_predictions as _validation
from support.prediction import save_tiny_model, tiny_plans


def _weak_probabilities(ref, weak_label, stray=True):
    """Confident (0.8) everywhere except inside ``weak_label``, which loses to background (0.55 vs 0.45)."""
    probs = np.full((3, *ref.shape), 0.1, np.float32)
    for k in range(3):
        probs[k][ref == k] = 0.8
    weak = ref == weak_label
    probs[:, weak] = 0.0
    probs[0][weak], probs[weak_label][weak] = 0.55, 0.45
    if stray:  # one confident stray voxel of label 1, far from its object: what postprocessing removes
        probs[:, 0, 15, 15] = (0.05, 0.9, 0.05)
    return probs


def _validation_with_probabilities(model_dir, refs, weak_label):
    for i, (case, ref) in enumerate(refs.items()):
        folder = model_dir / f"fold_{i % 2}" / "validation"
        probs = _weak_probabilities(ref, weak_label)
        write_image(probs.argmax(0).astype(np.uint8), GEO, folder / f"{case}.nii.gz")
        save_npz(folder / f"{case}.npz", probabilities=probs)


def test_ensemble_beats_single_models_and_predict_uses_it(smitunet_dirs, tmp_path, capsys):
    refs = _raw_dataset(smitunet_dirs["raw"])
    plans = tiny_plans(dataset_name=NAME)
    a = save_tiny_model(smitunet_dirs["results"], plans, folds=(0, 1), trainer="A")
    b = save_tiny_model(smitunet_dirs["results"], plans, folds=(0, 1), trainer="B", seed=5)
    _validation_with_probabilities(a, refs, weak_label=2)   # A misses label 2, B misses label 1
    _validation_with_probabilities(b, refs, weak_label=1)
    info = find_best("990", folds=("0", "1"))
    singles = {c["trainer"]: c["dice"] for c in info["candidates"]}
    assert singles["A"] == pytest.approx(0.5, abs=0.02) and singles["B"] == pytest.approx(0.5, abs=0.02)
    best = info["best"]
    assert best["ensemble"] and [m["trainer"] for m in best["members"]] == ["A", "B"]
    assert best["dice"] > 0.95 and info["best_single"]["trainer"] in ("A", "B")
    assert info["predict_command"].endswith("-tr A B -p smitunetPlans smitunetPlans -c 3d_fullres 3d_fullres -f 0 1")
    # postprocessing is decided on the ensemble's own outputs and stored with it
    ensemble_dir = smitunet_dirs["results"] / NAME / "ensembles" / best["name"]
    assert info["postprocessing"]["keep_largest_component"] == [1]
    assert json.loads((ensemble_dir / "postprocessing.json").read_text())["keep_largest_component"] == [1]
    crossval = read_image(ensemble_dir / "crossval" / "c1.nii.gz")[0]
    expected = refs["c1"].copy()
    expected[0, 15, 15] = 1
    np.testing.assert_array_equal(crossval, expected)
    single_dir = smitunet_dirs["results"] / NAME / f"{info['best_single']['trainer']}__smitunetPlans__3d_fullres"
    single_post = json.loads((single_dir / "postprocessing.json").read_text())  # for --disable_ensemble
    weak = 2 if info["best_single"]["trainer"] == "A" else 1
    assert single_post["per_label"][str(weak)]["dice_before"] == 0.0

    write_image(np.zeros(GEO.shape_zyx, np.float32), GEO, tmp_path / "in" / "x_0000.nii.gz")
    capsys.readouterr()
    predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "990", "--disable_tta"])
    assert "using the best ensemble" in capsys.readouterr().err
    settings = json.loads((tmp_path / "out" / "prediction_settings.json").read_text())
    assert [m.split("/")[1] for m in settings["models"]] == [a.name, b.name]
    assert settings["postprocessing"]["keep_largest_component"] == [1]
    predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "single"), "-d", "990", "--disable_tta",
                  "--disable_ensemble"])
    settings = json.loads((tmp_path / "single" / "prediction_settings.json").read_text())
    assert settings["models"] == [f"{NAME}/{info['best_single']['trainer']}__smitunetPlans__3d_fullres"]


def test_missing_validation_probabilities_are_predicted_once(smitunet_dirs, tmp_path):
    refs = _raw_dataset(smitunet_dirs["raw"], n=2)
    model = save_tiny_model(smitunet_dirs["results"], tiny_plans(dataset_name=NAME), folds=(0, 1))
    _validation(model, refs, shrink=0, stray=False)
    cases = list_training_cases(smitunet_dirs["raw"] / NAME)
    assert ensure_probabilities(model, ("0", "1"), cases, use_tta=False, device="cpu") == 2
    assert ensure_probabilities(model, ("0", "1"), cases, use_tta=False, device="cpu") == 0
    stale = model / "fold_0" / "validation" / "c0.npz"   # older than a retrained fold's checkpoint: redone
    os.utime(stale, (1, 1))
    assert ensure_probabilities(model, ("0", "1"), cases, use_tta=False, device="cpu") == 1
    assert stale.stat().st_mtime > 1
    with np.load(model / "fold_1" / "validation" / "c1.npz", allow_pickle=False) as npz:
        computed = npz["probabilities"]
    # the same as smitunet_predict --save_probabilities with that fold's checkpoint on the raw image
    options = PredictionOptions(use_tta=False, device="cpu", num_processes=0, save_probabilities=True)
    Predictor.from_model_folder(model, ["1"], options=options).predict_folder(
        smitunet_dirs["raw"] / NAME / "imagesTr" / "c1_0000.nii.gz", tmp_path / "pred")
    with np.load(tmp_path / "pred" / "c1.npz", allow_pickle=False) as npz:
        np.testing.assert_allclose(computed, npz["probabilities"], atol=1e-5)
    assert computed.shape == (3, *GEO.shape_zyx)


def _probabilities(folder, case="x"):
    with np.load(folder / f"{case}.npz", allow_pickle=False) as npz:
        return npz["probabilities"]


@pytest.mark.parametrize("spacing_b", [(1.0, 1.0, 1.0), (1.5, 1.0, 1.0)], ids=["shared", "resampled"])
def test_explicit_ensemble_averages_the_models(smitunet_dirs, tmp_path, spacing_b):
    save_tiny_model(smitunet_dirs["results"], tiny_plans(), trainer="A")
    save_tiny_model(smitunet_dirs["results"], tiny_plans(spacing=spacing_b), trainer="B", seed=3)
    rng = np.random.default_rng(0)
    write_image(rng.normal(100, 30, GEO.shape_zyx).astype(np.float32), GEO, tmp_path / "in" / "x_0000.nii.gz")
    common = ["-i", str(tmp_path / "in"), "--disable_tta", "--save_probabilities", "-npp", "0"]
    for trainer in ("A", "B"):
        predict_main([*common, "-o", str(tmp_path / trainer), "-tr", trainer])
    predict_main([*common, "-o", str(tmp_path / "AB"), "-tr", "A", "B", "-c", "3d_fullres"])
    folders = [smitunet_dirs["results"] / "Dataset990_Tiny" / f"{t}__smitunetPlans__3d_fullres" for t in "AB"]
    predictor = Predictor.from_model_folders([(f, ["0"]) for f in folders])
    assert len(predictor.groups) == (1 if spacing_b == (1.0, 1.0, 1.0) else 2)  # shared vs restored averaging
    mean = _probabilities(tmp_path / "AB")
    expected = (_probabilities(tmp_path / "A") + _probabilities(tmp_path / "B")) / 2
    np.testing.assert_allclose(mean, expected, atol=1e-5)
    assert not np.allclose(_probabilities(tmp_path / "A"), _probabilities(tmp_path / "B"), atol=1e-3)
    labels, geometry = read_image(tmp_path / "AB" / "x.nii.gz")
    np.testing.assert_array_equal(labels, mean.argmax(0))
    assert geometry.matches(GEO, tol=1e-6) is None


def test_ensemble_option_counts_must_agree(smitunet_dirs, tmp_path, capsys):
    save_tiny_model(smitunet_dirs["results"], tiny_plans(), trainer="A")
    save_tiny_model(smitunet_dirs["results"], tiny_plans(), trainer="B")
    write_image(np.zeros(GEO.shape_zyx, np.float32), GEO, tmp_path / "in" / "x_0000.nii.gz")
    with pytest.raises(SystemExit):
        predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-tr", "A", "B",
                      "-c", "x", "y", "z"])
    assert "needs 1 or 3 values per option; got trainer (2)" in capsys.readouterr().err
    with pytest.raises(SmitunetError, match="named twice"):
        from smitunet.inference.model_folder import select_models
        select_models(None, trainers=["A", "A"])

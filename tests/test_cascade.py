"""3d_cascade_fullres (nnU-Net's cascade): planned with 3d_lowres, trained on the out-of-fold 3d_lowres
segmentations as one-hot input channels, predicted with the low-resolution stage run internally or given."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smitunet import api
from smitunet.checkpoint_io import load_training_checkpoint
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.errors import SmitunetError
from smitunet.evaluation.fold_validation import predict_case
from smitunet.imageio import read_image
from smitunet.inference.export import label_lookup
from smitunet.inference.inputs import find_input_cases
from smitunet.inference.predictor import PredictionOptions, Predictor
from smitunet.networks.registry import build_from_config
from smitunet.plans import Plans
from smitunet.preprocessing.case_arrays import data_file, load_case_array, open_case_array
from smitunet.preprocessing.planner import cascade_configuration, plan_experiment
from smitunet.preprocessing.preprocessor import preprocess_case
from smitunet.preprocessing.resampling import resample_probabilities, separate_axis
from smitunet.training.build import build_trainer
from smitunet.training.cascade_transforms import MovePreviousStageToData, PerturbPreviousStage
from smitunet.training.data import PatchLoader
from smitunet.utils.files import load_json
from support.planning import DATASET_JSON, fingerprint
from support.prediction import tiny_plans

DATASET = "Dataset997_Cascade"
TRAIN = dict(epochs=1, iters_per_epoch=2, num_workers=0, disable_tta=True, device="cpu")
PREDICT = PredictionOptions(use_tta=False, device="cpu", num_processes=0, progress=False)


def test_large_ct_gets_3d_lowres_and_3d_cascade_fullres():
    ct = dict(DATASET_JSON, channel_names={"0": "CT"})
    plans = plan_experiment("Dataset001_CT", ct, fingerprint([300, 512, 512], [0.8, 0.8, 0.8], n=20),
                            preset="smit_tiny")
    full, low, cascade = (plans.configuration(c) for c in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert low.spacing[0] > full.spacing[0] and cascade.previous_stage == "3d_lowres"
    # nnU-Net: 3d_fullres's data, spacing, patch and batch; the foreground labels' one-hot as extra inputs
    assert cascade.data_identifier == full.data_identifier == "smitunetPlans_3d_fullres"
    assert (cascade.spacing, cascade.patch_size, cascade.batch_size) == (full.spacing, full.patch_size, full.batch_size)
    assert cascade.network.kwargs["in_channels"] == 1 + 2
    assert {k: v for k, v in cascade.network.kwargs.items() if k != "in_channels"} == \
        {k: v for k, v in full.network.kwargs.items() if k != "in_channels"}
    assert plans.next_stages("3d_lowres") == ["3d_cascade_fullres"] and plans.next_stages("3d_fullres") == []
    assert Plans.from_dict(plans.to_dict()) == plans


def test_plans_check_the_cascade_and_old_plans_still_load():
    plans = tiny_plans()
    full = plans.configuration("3d_fullres")
    low = dataclasses.replace(full, data_identifier="smitunetPlans_3d_lowres", spacing=[2.0, 2.0, 2.0])
    old = plans.to_dict()
    old["configurations"]["3d_lowres"] = dataclasses.asdict(low)
    for c in old["configurations"].values():
        del c["previous_stage"]  # written before cascades existed
    assert "3d_cascade_fullres" not in Plans.from_dict(old).configurations
    good = dataclasses.replace(plans, configurations={"3d_fullres": full, "3d_lowres": low,
                                                      "3d_cascade_fullres": cascade_configuration(full, 2)})
    assert Plans.from_dict(good.to_dict()).configuration("3d_cascade_fullres").network.kwargs["in_channels"] == 3
    wrong_channels = good.to_dict()
    wrong_channels["configurations"]["3d_cascade_fullres"]["network"]["kwargs"]["in_channels"] = 1
    with pytest.raises(SmitunetError, match=r"in_channels must be 3 \(1 image \+ 2 previous-stage"):
        Plans.from_dict(wrong_channels)
    no_previous = good.to_dict()
    del no_previous["configurations"]["3d_lowres"]
    with pytest.raises(SmitunetError, match="previous_stage: no configuration '3d_lowres'"):
        Plans.from_dict(no_previous)


def test_perturbation_draws_first_then_applies_deterministically():
    onehot = np.zeros((1, 3, 16, 16, 16), np.float32)  # image channel, then labels 1 and 2
    onehot[0, 1, 2:10, 2:10, 2:10] = 1                   # a large structure of label 1
    onehot[0, 2, 10:14, 10:14, 10:14] = 1                # and a small one of label 2, touching it
    onehot[0, 2, 0, 0, 0] = 1                            # plus a one-voxel speck of label 2
    perturb = PerturbPreviousStage(2)
    dilate = {"operations": [[(0, "dilation", 2)]], "removals": [[]]}
    out = perturb.apply({"data": onehot.copy()}, **dilate)["data"][0]
    assert out[1].sum() > onehot[0, 1].sum() and not (out[1] * out[2]).any()  # added voxels leave label 2
    again = perturb.apply({"data": onehot.copy()}, **dilate)["data"][0]
    np.testing.assert_array_equal(out, again)
    removed = perturb.apply({"data": onehot.copy()}, operations=[[]], removals=[[(1, 0.0)]])["data"][0]
    assert removed[2].sum() == onehot[0, 2].sum() - 1 and removed[2, 0, 0, 0] == 0  # first eligible component
    np.random.seed(0)
    params = perturb.get_parameters(data=np.zeros((64, 3, 4, 4, 4)))
    applied = [ops for ops in params["operations"] if ops]
    assert 10 < len(applied) < 45 and all(sorted(c for c, _, _ in ops) == [0, 1] for ops in applied)
    assert all(1 <= r <= 8 for ops in applied for _, _, r in ops)
    moved = MovePreviousStageToData([1, 2])(data=np.zeros((1, 1, 2, 2, 2), np.float32),
                                            seg=np.array([0, 2, 1, 0, 0, 0, 2, 2] * 2, np.int16).reshape(1, 2, 2, 2, 2))
    assert moved["data"].shape == (1, 3, 2, 2, 2) and moved["seg"].shape == (1, 1, 2, 2, 2)
    np.testing.assert_array_equal(moved["data"][0, 1:].reshape(2, 8), [[0, 0, 1, 0, 0, 0, 0, 0],
                                                                       [0, 1, 0, 0, 0, 0, 1, 1]])


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    """A generated dataset whose plans (tiny memory target) hold 3d_lowres and 3d_cascade_fullres; 3d_lowres
    trained on fold 0 (the cascade's error recorded), then on folds 1-4, then the cascade on fold 0."""
    root = tmp_path_factory.mktemp("cascade")
    with pytest.MonkeyPatch.context() as mp:
        for kind in ("raw", "preprocessed", "results"):
            (root / kind).mkdir()
            mp.setenv(f"smitunet_{kind}", str(root / kind))
        generate_synthetic_dataset(root / "raw", dataset_id=997, name="Cascade", num_training=5, num_test=1,
                                   shape=(32, 40, 36))
        plans = api.plan_and_preprocess([997], preset="smit_tiny", gpu_memory_target=0.004, num_processes=1)[0]
        api.train(997, "3d_lowres", 0, **TRAIN)
        with pytest.raises(SmitunetError) as missing:
            api.train(997, "3d_cascade_fullres", 0, **TRAIN)
        for fold in range(1, 5):
            api.train(997, "3d_lowres", fold, **TRAIN)
        summary = api.train(997, "3d_cascade_fullres", 0, **TRAIN)
        results = root / "results" / DATASET
        yield SimpleNamespace(root=root, plans=plans, missing=str(missing.value), summary=summary,
                              low=results / "SMITTrainer__smitunetPlans__3d_lowres",
                              model=results / "SMITTrainer__smitunetPlans__3d_cascade_fullres",
                              data=root / "preprocessed" / DATASET / "smitunetPlans_3d_fullres",
                              low_data=root / "preprocessed" / DATASET / "smitunetPlans_3d_lowres",
                              splits=load_json(root / "preprocessed" / DATASET / "splits_final.json"))


def test_missing_lowres_prediction_is_one_line_naming_the_case_and_the_command(cascade):
    message = cascade.missing
    assert "\n" not in message
    case = message.split("prediction of case ")[1].split()[0]
    fold = next(i for i, s in enumerate(cascade.splits) if case in s["val"])
    assert fold != 0 and message.endswith(f"run smitunet_train {DATASET} 3d_lowres {fold}")


def _expected_previous_stage(cascade, case: str, fold: int) -> np.ndarray:
    """The lowres network of ``fold`` on the case, resampled linearly to the fullres preprocessed grid, labelled."""
    ckpt = load_training_checkpoint(cascade.low / f"fold_{fold}" / "checkpoint_final.pt")
    network = build_from_config(ckpt.network["name"], dict(ckpt.network["kwargs"], deep_supervision=False))
    network.load_state_dict(ckpt.state_dict)
    network.eval()
    plans = cascade.plans
    probabilities, _ = predict_case(network, plans, "3d_lowres", cascade.low_data, case, torch.device("cpu"), None)
    shape = open_case_array(data_file(cascade.data, case)).shape[1:]
    axis = separate_axis(plans.configuration("3d_lowres").spacing, plans.configuration("3d_fullres").spacing)
    return label_lookup(plans)[resample_probabilities(probabilities, shape, axis).argmax(0)]


def test_cascade_input_channels_are_the_resampled_one_hot_of_the_lowres_prediction(cascade, monkeypatch):
    for kind in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"smitunet_{kind}", str(cascade.root / kind))
    written = sorted(p.stem for p in (cascade.low / "predicted_next_stage" / "3d_cascade_fullres").glob("*.npy"))
    assert written == sorted(cascade.splits[0]["train"] + cascade.splits[0]["val"])  # one per case, out of fold
    case = cascade.splits[0]["val"][0]
    expected = _expected_previous_stage(cascade, case, fold=0)
    assert set(np.unique(expected)) - {0} and set(np.unique(expected)) <= {0, 1, 2}

    trainer = build_trainer(997, "3d_cascade_fullres", 0, device="cpu", num_workers=0)
    trainer.data_folder = cascade.data
    image = load_case_array(data_file(cascade.data, case))
    loader = PatchLoader(trainer.build_cases([case]), image.shape[1:], 1, [0], seed=0)
    batch = trainer.validation_transforms()(**loader.generate_train_batch())
    data = batch["data"][0].numpy()
    assert data.shape == (3, *image.shape[1:]) and batch["seg"].shape[1] == 1
    np.testing.assert_array_equal(data[0], image[0])
    np.testing.assert_array_equal(data[1:], np.stack([expected == 1, expected == 2]).astype(np.float32))

    # training patches: augmented and perturbed, still one exclusive one-hot channel per label
    train_loader = trainer.build_train_loader(trainer.build_cases([case]), [0, 1], start_batch=0)
    train_batch = trainer.training_transforms()(**train_loader.generate_train_batch())
    extra = train_batch["data"][:, 1:].numpy()
    assert train_batch["data"].shape[1:] == (3, *trainer.config.patch_size)
    assert set(np.unique(extra)) <= {0.0, 1.0} and extra.sum(1).max() <= 1


def test_cascade_trains_validates_and_is_ranked(cascade, monkeypatch):
    for kind in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"smitunet_{kind}", str(cascade.root / kind))
    assert cascade.summary["metric_per_case"] and (cascade.model / "fold_0" / "checkpoint_final.pt").is_file()
    ckpt = load_training_checkpoint(cascade.model / "fold_0" / "checkpoint_final.pt")
    assert ckpt.network["kwargs"]["in_channels"] == 3 and ckpt.configuration == "3d_cascade_fullres"
    for case in cascade.splits[0]["val"]:
        assert read_image(cascade.model / "fold_0" / "validation" / f"{case}.nii.gz")[1] == \
            read_image(cascade.root / "raw" / DATASET / "labelsTr" / f"{case}.nii.gz")[1]
    from smitunet.evaluation.best_configuration import find_best

    info = find_best(997, folds=("0",), use_tta=False, device="cpu")
    ranked = {c["configuration"] for c in info["candidates"]}
    assert ranked == {"3d_lowres", "3d_cascade_fullres"} and len(info["ensembles"]) == 1


def _same_geometry(a, b) -> bool:
    ga, gb = read_image(a)[1], read_image(b)[1]
    return ga.shape_zyx == gb.shape_zyx and np.allclose(ga.spacing, gb.spacing) and \
        np.allclose(ga.origin, gb.origin) and np.allclose(ga.direction, gb.direction)


def test_predict_runs_3d_lowres_itself_or_takes_prev_stage_predictions(cascade, monkeypatch, tmp_path):
    for kind in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"smitunet_{kind}", str(cascade.root / kind))
    images = cascade.root / "raw" / DATASET / "imagesTs"
    source = images / "test_000_0000.nii.gz"
    # reading ahead in a thread (the CLI's default): the lowres stage still runs on the network's thread
    internal = api.predict(images, tmp_path / "internal", dataset=997, configurations=["3d_cascade_fullres"],
                           folds=["0"], options=dataclasses.replace(PREDICT, num_processes=1))
    assert [p.name for p in internal] == ["test_000.nii.gz"] and _same_geometry(internal[0], source)
    image, geometry = read_image(source)
    labels = api.predict(image, dataset=997, configurations=["3d_cascade_fullres"], folds=["0"], geometry=geometry,
                         options=PREDICT)
    np.testing.assert_array_equal(labels, read_image(internal[0])[0])
    low = api.predict(images, tmp_path / "low", dataset=997, configurations=["3d_lowres"], folds=["0"],
                      options=PREDICT)
    given = api.predict(images, tmp_path / "given", dataset=997, configurations=["3d_cascade_fullres"], folds=["0"],
                        options=PREDICT, prev_stage_predictions=tmp_path / "low")
    assert _same_geometry(given[0], source)
    # the given segmentation is preprocessed like a label map and one-hot encoded behind the image
    predictor = Predictor.from_model_folder(cascade.model, ["0"], options=dataclasses.replace(
        PREDICT, prev_stage_predictions=tmp_path / "low"))
    data, _ = predictor.preprocess(find_input_cases(images, 1)[0])
    _, previous, _ = preprocess_case(image[None], geometry, cascade.plans, "3d_cascade_fullres",
                                     seg=read_image(low[0])[0])
    np.testing.assert_array_equal(data[1:], np.stack([previous[0] == 1, previous[0] == 2]).astype(np.float32))


def test_missing_prev_stage_prediction_is_a_one_line_cli_error(cascade, monkeypatch, tmp_path, capsys):
    from smitunet.inference.cli import main as predict_main

    for kind in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"smitunet_{kind}", str(cascade.root / kind))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["-i", str(cascade.root / "raw" / DATASET / "imagesTs"), "-o", str(tmp_path / "out"), "-d", "997",
                      "-c", "3d_cascade_fullres", "-f", "0", "--disable_tta", "--device", "cpu",
                      "-prev_stage_predictions", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()  # the model line (a warning), then the error
    assert exit_info.value.code == 2 and len([line for line in err if line.startswith("error:")]) == 1
    assert err[-1].startswith(f"error: {tmp_path / 'empty' / 'test_000.nii.gz'}: no previous-stage segmentation of "
                             "case test_000")
    assert not (tmp_path / "out").exists()

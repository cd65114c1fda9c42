"""``smitunet.api`` runs the whole pipeline with no CLI involved: plan -> train -> predict (folder and array) ->
evaluate, on generated data."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_pretrain_through_the_api_takes_the_cli_flags_by_name(tmp_path):
    from smitunet import api
    from smitunet.checkpoint_io import load_checkpoint
    from smitunet.errors import SmitunetError
    from smitunet.imageio import Geometry, write_image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(rng.normal(100, 20, size=(30, 34, 32)).astype(np.float32),
                    Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (32, 34, 30)),
                    folder / f"img_{i}.nii.gz")
    out = api.pretrain(tmp_path / "smit.pt", images=[folder], preset="smit_tiny", patch=[32, 32, 32], epochs=1,
                       iters_per_epoch=2, batch_size=1, num_workers=0, device="cpu", method="gmim",
                       gmim_siamese=False, mask_ratio="0.6")
    meta = load_checkpoint(out)["meta"]
    assert meta["method"] == "gmim" and meta["steps"] == 2 and meta["patch"] == [32, 32, 32]
    assert meta["settings"]["gmim_siamese"] is False and meta["settings"]["mask_ratio"] == 0.6
    with pytest.raises(SmitunetError, match="unknown setting 'epoch'"):
        api.pretrain(tmp_path / "b.pt", images=[folder], epoch=1)
    with pytest.raises(SmitunetError, match="method='mae'; choose from smit, smart, gmim"):
        api.pretrain(tmp_path / "b.pt", images=[folder], method="mae")
    assert not (tmp_path / "b.pt").exists()


def test_find_best_configuration_and_convert_msd_mirror_their_clis():
    import inspect

    from smitunet import api
    from smitunet.dataset.msd import build_parser as msd_parser
    from smitunet.evaluation.best_configuration import build_parser as best_parser

    def flags(parser):
        return {a.dest for a in parser._actions} - {"help"}

    best = set(inspect.signature(api.find_best_configuration).parameters)
    # --disable_ensembling / --disable_tta are the negations ensembling= / use_tta=
    assert flags(best_parser()) - {"disable_ensembling", "disable_tta"} | {"ensembling", "use_tta"} == best
    msd = set(inspect.signature(api.convert_msd).parameters)
    assert {"task_dir", "dataset_id", "overwrite", "num_processes"} == msd
    assert flags(msd_parser()) == {"i", "d", "overwrite", "np"}

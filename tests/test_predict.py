import numpy as np
import pytest
import torch

from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry, read_image
from smitunet.inference.cli import main as predict_main
from smitunet.inference.predictor import PredictionOptions, Predictor
from support.prediction import save_tiny_model, tiny_plans
from support.prediction import write_case as _write_case

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _assert_same_geometry(pred_file, geo):
    labels, got = read_image(pred_file)
    assert got.matches(geo, tol=1e-6) is None, (pred_file, got, geo)
    assert labels.shape == geo.shape_zyx
    return labels


def test_raw_named_multichannel_folder_round_trips_geometry(smitunet_dirs, tmp_path):
    plans = tiny_plans(num_channels=2, spacing=(1.5, 1.0, 1.0))   # forces resampling back
    save_tiny_model(smitunet_dirs["results"], plans, folds=(0, 1))
    inp = tmp_path / "in"
    geos = {"a": Geometry((0.9, 1.1, 2.0), (-5.0, 12.5, 3.0), OBLIQUE, (21, 18, 9)),
            "b": Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (11, 7, 13))}
    for name, geo in geos.items():
        _write_case(inp, name, geo, channels=2)
    predict_main(["-i", str(inp), "-o", str(tmp_path / "out"), "--disable_tta", "--save_probabilities",
                  "-npp", "0"])
    for name, geo in geos.items():
        labels = _assert_same_geometry(tmp_path / "out" / f"{name}.nii.gz", geo)
        assert set(np.unique(labels)) <= {0, 1, 2}
        with np.load(tmp_path / "out" / f"{name}.npz", allow_pickle=False) as npz:
            probs = npz["probabilities"]
        assert probs.shape == (3, *geo.shape_zyx) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        np.testing.assert_array_equal(probs.argmax(0), labels)
    assert (tmp_path / "out" / "prediction_settings.json").is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if ".part" in p.name]


def test_plain_files_keep_their_format(smitunet_dirs, tmp_path):
    save_tiny_model(smitunet_dirs["results"], tiny_plans())
    inp = tmp_path / "plain"
    geo_nrrd = Geometry((0.7, 0.8, 1.3), (1.0, 2.0, -3.0), OBLIQUE, (17, 19, 12))
    geo_nii = Geometry((1.0, 1.0, 1.0), (4.0, 5.0, 6.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (20, 20, 20))
    _write_case(inp, "scan_one", geo_nrrd, raw_naming=False, ending=".nrrd")
    _write_case(inp, "patient7", geo_nii, raw_naming=False, ending=".nii.gz")
    predict_main(["-i", str(inp), "-o", str(tmp_path / "out"), "--disable_tta", "-npp", "1"])
    _assert_same_geometry(tmp_path / "out" / "scan_one.nrrd", geo_nrrd)
    _assert_same_geometry(tmp_path / "out" / "patient7.nii.gz", geo_nii)


def test_fold_probabilities_are_averaged_softmaxes(smitunet_dirs):
    plans = tiny_plans()
    model_dir = save_tiny_model(smitunet_dirs["results"], plans, folds=(0, 1, 2))
    options = PredictionOptions(use_tta=False, device="cpu", num_processes=0)
    both = Predictor.from_model_folder(model_dir, ["0", "2"], options=options)
    singles = [Predictor.from_model_folder(model_dir, [f], options=options) for f in ("0", "2")]
    data = np.random.default_rng(1).normal(size=(1, 20, 18, 16)).astype(np.float32)
    mean = both.predict_case(data)
    expected = (singles[0].predict_case(data) + singles[1].predict_case(data)) / 2
    np.testing.assert_allclose(mean, expected, atol=1e-6)
    assert not np.allclose(singles[0].predict_case(data), singles[1].predict_case(data))
    np.testing.assert_allclose(mean.sum(0), 1.0, atol=1e-5)


def test_model_selection_errors_list_candidates(smitunet_dirs, tmp_path, capsys):
    inp = tmp_path / "in"
    _write_case(inp, "c", Geometry((1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 16, 16)))
    with pytest.raises(SystemExit):
        predict_main(["-i", str(inp), "-o", str(tmp_path / "o")])
    assert "no trained model with checkpoint_final.pt" in capsys.readouterr().err
    save_tiny_model(smitunet_dirs["results"], tiny_plans(), trainer="SMITTrainer")
    save_tiny_model(smitunet_dirs["results"], tiny_plans(), trainer="ConvUNetTrainer")
    with pytest.raises(SystemExit):
        predict_main(["-i", str(inp), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "2 trained models match" in err and "ConvUNetTrainer__smitunetPlans__3d_fullres" in err
    with pytest.raises(SystemExit):
        predict_main(["-i", str(inp), "-o", str(tmp_path / "o"), "-tr", "SMITTrainer", "-f", "3"])
    assert "fold(s) 3 have no checkpoint_final.pt; trained folds: 0" in capsys.readouterr().err
    predict_main(["-i", str(inp), "-o", str(tmp_path / "o"), "-d", "990", "-tr", "SMITTrainer", "--disable_tta"])
    assert (tmp_path / "o" / "c.nii.gz").is_file()


def test_channel_count_mismatch_is_clear(smitunet_dirs, tmp_path):
    save_tiny_model(smitunet_dirs["results"], tiny_plans(num_channels=2))
    inp = tmp_path / "in"
    _write_case(inp, "c", Geometry((1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (8, 8, 8)), channels=1)
    with pytest.raises(SmitunetError, match="case c has 1 channel file.*needs 2"):
        Predictor.from_model_folder(smitunet_dirs["results"] / "Dataset990_Tiny" /
                                    "SMITTrainer__smitunetPlans__3d_fullres", ["0"]).predict_folder(inp, tmp_path / "o")


def test_parts_split_cases_between_workers(smitunet_dirs, tmp_path):
    save_tiny_model(smitunet_dirs["results"], tiny_plans())
    inp = tmp_path / "in"
    geo = Geometry((1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (8, 9, 10))
    for i in range(5):
        _write_case(inp, f"case{i}", geo)
    predict_main(["-i", str(inp), "-o", str(tmp_path / "o"), "--disable_tta", "--num_parts", "2", "--part_id", "1"])
    assert sorted(p.name for p in (tmp_path / "o").glob("*.nii.gz")) == ["case1.nii.gz", "case3.nii.gz"]
    predict_main(["-i", str(inp), "-o", str(tmp_path / "o"), "--disable_tta", "--num_parts", "2", "--part_id", "0"])
    assert len(list((tmp_path / "o").glob("*.nii.gz"))) == 5


def test_bf16_on_the_cpu_needs_onednn_bf16(monkeypatch):
    from smitunet.inference.predictor import autocast_dtype

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(SmitunetError, match="no bf16 support.*use fp32"):
        autocast_dtype("bf16", torch.device("cpu"))


def test_unusable_bf16_stops_the_cli_before_any_output(smitunet_dirs, tmp_path, monkeypatch, capsys):
    save_tiny_model(smitunet_dirs["results"], tiny_plans())
    inp = tmp_path / "in"
    _write_case(inp, "c", Geometry((1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 16, 16)))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["-i", str(inp), "-o", str(tmp_path / "o"), "--device", "cpu", "--precision", "bf16"])
    assert exit_info.value.code != 0
    assert "--precision bf16: this CPU has no bf16 support" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no oneDNN bf16")
def test_bf16_on_the_cpu_runs_the_tiles_under_bf16_autocast():
    from smitunet.inference.predictor import autocast_dtype
    from smitunet.inference.sliding_window import predict_sliding_window

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)

        def forward(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return self.conv(x)

    data = torch.randn(1, 6, 6, 6)
    dtype = autocast_dtype("bf16", torch.device("cpu"))
    out = predict_sliding_window(Probe(), data, (4, 4, 4), 2, mirror_axes=None, autocast_dtype=dtype)
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert out.dtype == torch.float32 and out.shape == (2, 6, 6, 6)  # accumulators stay fp32
    seen.clear()
    predict_sliding_window(Probe(), data, (4, 4, 4), 2, mirror_axes=None, autocast_dtype=None)
    assert seen and not any(enabled for enabled, _ in seen)


def test_device_and_precision_choices():
    from smitunet.inference.predictor import autocast_dtype, resolve_device

    assert autocast_dtype("fp16", torch.device("cpu")) is None  # the CPU autocasts to bf16 only
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SmitunetError, match="no CUDA GPU"):
            resolve_device("cuda")

"""smitunet_export and smitunet_predict -m DIR --backend onnxruntime|torchscript: every network preset exports
(non-cube patches included) with the eager network's logits, and predicting an exported folder gives the eager
label maps; what cannot be exported or run is one line and writes nothing."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch

from smitunet import api
from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry, read_image
from smitunet.inference.cli import main as predict_main
from smitunet.inference.export_cli import main as export_main
from smitunet.networks import create_network
from smitunet.networks.registry import available_presets, resolve_kwargs
from smitunet.plans import NetworkConfig, Plans
from support.prediction import save_tiny_model, tiny_plans, write_case

# Small non-cube patches per preset: total strides [4, 8, 8] for the Swin presets (2 stages, the last merge
# keeps z), [8, 8, 8] for the convolutional one (3 stages); swinunetr_ssl's window is 7.
SWIN_STRIDES = [[2, 2, 2], [2, 2, 2], [1, 2, 2]]
PRESET_SETUPS = {
    "smit_tiny": ([8, 16, 24], dict(num_stages=2, strides=SWIN_STRIDES)),
    "smit_small": ([8, 16, 24], dict(num_stages=2, strides=SWIN_STRIDES, depths=[1, 1, 1, 1])),
    "smit_base": ([8, 16, 24], dict(num_stages=2, strides=SWIN_STRIDES, depths=[1, 1, 1, 1])),
    "swinunetr_ssl": ([8, 16, 24], dict(num_stages=2, strides=SWIN_STRIDES, depths=[1, 1, 1, 1])),
    "conv_unet": ([8, 16, 24], dict(num_stages=3, base_features=4, max_features=16,
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])),
}
GEO = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
               size=(37, 21, 6))  # x, y, z: z smaller than the patch (padding), x over several tiles


def _preset_plans(preset: str) -> Plans:
    patch, overrides = PRESET_SETUPS[preset]
    base = tiny_plans()
    kwargs = resolve_kwargs(preset, 1, base.num_classes, patch, **overrides)
    cfg = dataclasses.replace(base.configuration("3d_fullres"), network=NetworkConfig(preset, kwargs),
                              patch_size=list(patch))
    return dataclasses.replace(base, configurations={"3d_fullres": cfg})


def _trained(smitunet_dirs, preset="smit_tiny", folds=(0,)):
    plans = _preset_plans(preset)
    model_dir = save_tiny_model(smitunet_dirs["results"], plans, folds=folds)
    return plans, model_dir


def _eager(plans, model_dir, fold=0):
    from smitunet.checkpoint_io import load_training_checkpoint

    ckpt = load_training_checkpoint(model_dir / f"fold_{fold}" / "checkpoint_final.pt")
    net = create_network(ckpt.network["name"], **dict(ckpt.network["kwargs"], deep_supervision=False))
    net.load_state_dict(ckpt.state_dict)
    return net.eval()


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_exports_to_onnx_with_the_eager_logits(smitunet_dirs, tmp_path, preset):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    assert preset in PRESET_SETUPS, f"new preset {preset}: add it to PRESET_SETUPS"
    plans, model_dir = _trained(smitunet_dirs, preset)
    out = api.export(plans.dataset_name, "3d_fullres", [0], tmp_path / "exported", format="onnx")
    manifest = json.loads((out / "export.json").read_text())
    patch = PRESET_SETUPS[preset][0]
    assert manifest["patch_size"] == patch and len(set(patch)) > 1 and manifest["folds"] == ["0"]
    assert {p.name for p in out.iterdir()} == {"export.json", "plans.json", "dataset.json", "fold_0"}
    session = ort.InferenceSession(str(out / "fold_0" / "network.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 1, *patch)).astype(np.float32)  # a batch of 3: free batch axis
    with torch.no_grad():
        expected = _eager(plans, model_dir)(torch.from_numpy(x)).numpy()
    got = session.run(["logits"], {"image": x})[0]
    assert got.shape == expected.shape == (3, plans.num_classes, *patch)
    assert np.abs(got - expected).max() <= 1e-4
    assert manifest["max_abs_logit_difference"]["0"] <= 1e-4


def _predict_both(smitunet_dirs, tmp_path, fmt, backend, extra=()):
    plans, _ = _trained(smitunet_dirs, "smit_tiny", folds=(0, 1))
    images = tmp_path / "images"
    write_case(images, "case_a", GEO, seed=3)
    export_main(["-d", plans.dataset_name, "-c", "3d_fullres", "-f", "0", "1", "-o", str(tmp_path / "exp"),
                 "--format", fmt])
    predict_main(["-i", str(images), "-o", str(tmp_path / "eager"), "-d", plans.dataset_name, "--device", "cpu",
                  "--save_probabilities", *extra])
    predict_main(["-i", str(images), "-o", str(tmp_path / "exported"), "-m", str(tmp_path / "exp"), "--backend",
                  backend, "--device", "cpu", "--save_probabilities", *extra])
    eager, geo_a = read_image(tmp_path / "eager" / "case_a.nii.gz")
    exported, geo_b = read_image(tmp_path / "exported" / "case_a.nii.gz")
    assert geo_a == geo_b
    with np.load(tmp_path / "eager" / "case_a.npz") as a, np.load(tmp_path / "exported" / "case_a.npz") as b:
        pa, pb = a["probabilities"], b["probabilities"]
    return eager, exported, pa, pb


def test_onnxruntime_predictions_equal_eager(smitunet_dirs, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    eager, exported, pa, pb = _predict_both(smitunet_dirs, tmp_path, "onnx", "onnxruntime")
    np.testing.assert_array_equal(exported, eager)  # label maps identical (two folds, mirroring TTA)
    assert np.abs(pa - pb).max() <= 1e-5
    assert len(np.unique(eager)) > 1  # not a trivially constant prediction
    settings = json.loads((tmp_path / "exported" / "prediction_settings.json").read_text())
    assert settings["backend"] == "onnxruntime" and settings["folds"] == ["0", "1"]
    # --npz probabilities are written compressed
    with zipfile.ZipFile(tmp_path / "exported" / "case_a.npz") as z:
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in z.infolist())
    assert "backend onnxruntime CPUExecutionProvider" in capsys.readouterr().err


def test_onnxruntime_without_tta_and_tile_batches(smitunet_dirs, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    eager, exported, pa, pb = _predict_both(smitunet_dirs, tmp_path, "onnx", "onnxruntime",
                                            extra=("--disable_tta", "--tile_batch_size", "3"))
    np.testing.assert_array_equal(exported, eager)
    assert np.abs(pa - pb).max() <= 1e-5


def test_torchscript_predictions_equal_eager(smitunet_dirs, tmp_path):
    eager, exported, pa, pb = _predict_both(smitunet_dirs, tmp_path, "torchscript", "torchscript")
    np.testing.assert_array_equal(exported, eager)
    assert np.abs(pa - pb).max() <= 1e-5


def test_predict_array_with_an_exported_folder(smitunet_dirs, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    plans, _ = _trained(smitunet_dirs)
    api.export(plans.dataset_name, "3d_fullres", None, tmp_path / "exp")
    image = np.random.default_rng(0).normal(100, 30, GEO.shape_zyx).astype(np.float32)
    eager = api.predict(image, dataset=plans.dataset_name, geometry=GEO)
    exported = api.predict(image, model_folders=[tmp_path / "exp"], geometry=GEO)
    np.testing.assert_array_equal(eager, exported)


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    for part in parts:
        assert part in err[-1], (part, err[-1])


def test_what_cannot_be_exported_or_run_is_one_line(smitunet_dirs, tmp_path, capsys):
    plans, model_dir = _trained(smitunet_dirs)
    images = tmp_path / "images"
    write_case(images, "case_a", GEO)
    out = tmp_path / "preds"

    def fails(main, argv, *parts):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        _one_line_error(capsys, *parts)

    # a bad exported folder: missing, not an export, incomplete
    fails(predict_main, ["-i", str(images), "-o", str(out), "-m", str(tmp_path / "nope")], "nope: not found")
    (tmp_path / "plain").mkdir()
    fails(predict_main, ["-i", str(images), "-o", str(out), "-m", str(tmp_path / "plain")],
          "not an exported model folder")
    export_main(["-d", plans.dataset_name, "-o", str(tmp_path / "ts"), "--format", "torchscript"])
    (tmp_path / "ts" / "fold_0" / "network.pt").unlink()
    fails(predict_main, ["-i", str(images), "-o", str(out), "-m", str(tmp_path / "ts")], "network.pt: missing")
    # wrong combinations
    fails(predict_main, ["-i", str(images), "-o", str(out), "-m", str(tmp_path / "ts"), "--backend",
                         "onnxruntime"], "exported as torchscript", "--backend torchscript")
    fails(predict_main, ["-i", str(images), "-o", str(out), "-m", str(tmp_path / "ts"), "-d", "990"],
          "-d cannot be combined")
    fails(predict_main, ["-i", str(images), "-o", str(out), "--backend", "onnxruntime"], "-m DIR")
    fails(predict_main, ["-i", str(images), "-o", str(out), "-m", str(tmp_path / "ts"), "-f", "3"],
          "fold(s) 3 were not exported")
    assert not out.exists()
    # the export refuses before writing anything
    fails(export_main, ["-d", plans.dataset_name, "-o", str(tmp_path / "ts")], "is not an empty folder")
    fails(export_main, ["-d", plans.dataset_name, "-f", "4", "-o", str(tmp_path / "e1")], "fold(s) 4")
    fails(export_main, ["-d", "991", "-o", str(tmp_path / "e2")], "991")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_a_failing_export_leaves_nothing(smitunet_dirs, tmp_path, monkeypatch):
    from smitunet.inference import network_export

    plans, _ = _trained(smitunet_dirs, folds=(0, 1))
    calls = []

    def broken(network, example, path):  # the second fold fails, after the first was written
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("unsupported operator aten::foo\nmore detail")
        path.write_bytes(b"x")

    monkeypatch.setattr(network_export, "_export_torchscript", broken)
    monkeypatch.setattr(network_export, "_check_export", lambda *a: 0.0)
    with pytest.raises(SmitunetError, match=r"fold_1/checkpoint_final.pt: the network cannot be exported to "
                                            r"torchscript \(RuntimeError: unsupported operator aten::foo\)$"):
        api.export(plans.dataset_name, "3d_fullres", None, tmp_path / "exp", format="torchscript")
    assert len(calls) == 2 and not (tmp_path / "exp").exists() and not list(tmp_path.glob(".*"))


def test_a_2d_configuration_is_refused_before_anything_is_written(smitunet_dirs, tmp_path):
    base = tiny_plans()
    kwargs = resolve_kwargs("smit_tiny", 1, base.num_classes, [16, 24], num_stages=2, spatial_dims=2,
                            strides=[[2, 2], [2, 2], [2, 2]])
    cfg = dataclasses.replace(base.configuration("3d_fullres"), patch_size=[16, 24],
                              network=NetworkConfig("smit_tiny", kwargs))
    plans = dataclasses.replace(base, configurations={"3d_fullres": cfg})
    save_tiny_model(smitunet_dirs["results"], plans)
    with pytest.raises(SmitunetError, match=r"has a 2D patch \[16, 24\]; only 3D configurations can be exported"):
        api.export(plans.dataset_name, "3d_fullres", None, tmp_path / "exp", format="torchscript")
    assert not (tmp_path / "exp").exists() and not list(tmp_path.glob(".*"))

"""smitunet_pretrain end to end on tiny generated data: output format, adapter match, resume, exports, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support.paths import shared_path
from smitunet.checkpoint_io import load_checkpoint
from smitunet.dataset.synthetic import generate_synthetic_dataset
from smitunet.imageio import Geometry, write_image
from smitunet.networks import create_network
from smitunet.networks.checkpoint_adapter import load_pretrained
from smitunet.pretraining.cli import main
from smitunet.pretraining.trainer import PretrainingRun

TINY = ["--preset", "smit_tiny", "--patch", "32", "32", "32", "--batch_size", "1", "--iters_per_epoch", "2",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Six single-channel MRI-like images of varying size and spacing (no labels)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        shape = (28 + 2 * i, 36, 30)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        blob = (z ** 2 + y ** 2 + x ** 2 < 0.5).astype(np.float32) * 300
        image = (blob + rng.normal(100, 20, size=shape)).astype(np.float32)
        write_image(image, Geometry((1.0, 1.0, 1.2), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), shape[::-1]),
                    folder / f"img_{i}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def finished_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "smit.pt"
    torch.set_num_threads(1)  # as the per-test fixture does, so the resumed run can match it bit for bit
    main(["-o", str(out), "-i", str(image_folder), "--epochs", "2", "--export_official",
          str(out.with_name("official.pt")), *TINY])
    return out


def test_output_format_and_logs(finished_run):
    ckpt = load_checkpoint(finished_run)
    assert (ckpt["format"], ckpt["kind"], ckpt["version"]) == ("smitunet", "pretraining", 1)
    meta = ckpt["meta"]
    assert meta["preset"] == "smit_tiny" and meta["in_channels"] == 1 and meta["patch"] == [32, 32, 32]
    assert meta["method"] == "smit" and meta["steps"] == 4 and meta["normalization"] == ["ZScore"]
    assert meta["spacing"] == pytest.approx([1.2, 1.0, 1.0])           # median spacing, (z, y, x)
    reference = create_network("smit_tiny", 1, 2, [32, 32, 32]).encoder.state_dict()
    assert set(ckpt["encoder"]) == set(reference)
    assert "mask_token" in ckpt["encoder"]
    assert all(ckpt["encoder"][k].shape == v.shape for k, v in reference.items())
    assert ckpt["network"]["name"] == "smit_tiny"
    rows = json.loads(finished_run.with_name("smit_log.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"loss", "reconstruction", "patch", "global", "momentum", "lr"} <= set(rows[0])
    assert finished_run.with_name("smit_log.csv").read_text().startswith("epoch,step,loss")
    assert finished_run.with_name("smit_progress.png").stat().st_size > 1000
    official = load_checkpoint(finished_run.with_name("official.pt"))
    assert set(official) == set(reference) and torch.equal(official["mask_token"], ckpt["encoder"]["mask_token"])


@pytest.mark.parametrize("name", ["smit.pt", "official.pt"])
def test_loads_into_segmentation_network_with_full_encoder_match(finished_run, name):
    # a fine-tuning network with another patch and anisotropic strides still takes every encoder tensor
    net = create_network("smit_tiny", 1, 3, [16, 64, 64], num_stages=4,
                         strides=[[2, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])
    report = load_pretrained(net, finished_run.with_name(name))
    assert report.matched_fraction == 1.0 and not report.missing
    exported = load_checkpoint(finished_run)["encoder"]
    for key, value in net.encoder.state_dict().items():
        if key in exported and key != "mask_token":
            assert torch.equal(value, exported[key]), key


def test_resume_continues_exactly(image_folder, tmp_path, finished_run, monkeypatch):
    out = tmp_path / "smit.pt"
    real_save = PretrainingRun.save

    def save_then_stop(self):
        real_save(self)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(PretrainingRun, "save", save_then_stop)
    with pytest.raises(SystemExit):
        main(["-o", str(out), "-i", str(image_folder), "--epochs", "2", *TINY])
    assert load_checkpoint(out)["meta"]["steps"] == 2
    monkeypatch.setattr(PretrainingRun, "save", real_save)
    main(["-o", str(out), "-i", str(image_folder), "--epochs", "2", "--c", *TINY])
    resumed, straight = load_checkpoint(out), load_checkpoint(finished_run)
    assert resumed["meta"]["steps"] == 4
    for key, value in straight["encoder"].items():
        assert torch.equal(resumed["encoder"][key], value), key
    rows = json.loads(out.with_name("smit_log.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1]


def test_state_holds_teacher_optimizer_centres_and_teacher_differs_from_student(finished_run):
    state = load_checkpoint(finished_run.with_name("smit_state.pt"))
    assert state["step"] == 4 and state["epoch"] == 2 and state["optimizer"]["state"]
    assert state["centers"]["patch"].abs().sum() > 0
    student, teacher = state["student"], state["teacher"]
    assert set(student) == set(teacher)
    assert not torch.equal(student["encoder.patch_embed.proj.weight"], teacher["encoder.patch_embed.proj.weight"])


@pytest.mark.parametrize("method", ["smart", "gmim"])
def test_methods_run_from_a_raw_dataset(method, smitunet_dirs, tmp_path):
    generate_synthetic_dataset(smitunet_dirs["raw"], dataset_id=998, num_training=3, num_test=1,
                               shape=(24, 32, 28))
    out = tmp_path / "smit.pt"
    main(["-o", str(out), "-d", "998", "--epochs", "1", "--method", method, *TINY])
    ckpt = load_checkpoint(out)
    assert ckpt["meta"]["method"] == method and ckpt["meta"]["num_images"] == 4   # imagesTr + imagesTs
    assert not any(k.startswith("stage_mask_tokens") for k in ckpt["encoder"])     # GMIM extras stay private


def test_user_errors_are_one_line(tmp_path, capsys, image_folder):
    with pytest.raises(SystemExit) as exc:
        main(["-o", str(tmp_path / "a.pt"), *TINY])
    assert exc.value.code == 2 and "no input images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-o", str(tmp_path / "a.pt"), "-i", str(image_folder), "--c", "--epochs", "1", *TINY])
    assert "no pretraining state" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-o", str(tmp_path / "a.pt"), "-i", str(tmp_path / "missing"), *TINY])
    assert "image folder not found" in capsys.readouterr().err


def test_dicom_series_folder_is_an_input():
    from smitunet.pretraining.data import collect_sources, derived_plans, preprocess_sources
    from smitunet.plans import NetworkConfig

    folder = shared_path("dicom_example")
    sources, channels = collect_sources([], [folder], "MRI")
    assert len(sources) == 1 and sources[0].paths[0].is_dir() and channels == {"0": "MRI"}
    plans = derived_plans(sources, channels, None, NetworkConfig("smit_tiny", {"patch_size": [32, 32, 32]}))
    (volume,) = preprocess_sources(sources, plans, "pretraining", show_progress=False)
    assert volume.ndim == 4 and volume.shape[0] == 1 and volume.dtype == np.float32
    assert abs(float(volume.mean())) < 1e-3 and abs(float(volume.std()) - 1) < 1e-2   # z-scored MRI


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no oneDNN bf16")
def test_bf16_pretraining_autocasts_the_step_and_records_it(image_folder, tmp_path, monkeypatch):
    out = tmp_path / "bf16.pt"
    seen = []
    original = PretrainingRun.train_step

    def probe(run, step, batch):
        hook = run.student.register_forward_hook(
            lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
        try:
            return original(run, step, batch)
        finally:
            hook.remove()

    monkeypatch.setattr(PretrainingRun, "train_step", probe)
    main(["-o", str(out), "-i", str(image_folder), "--epochs", "1", "--precision", "bf16", *TINY])
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    ckpt = load_checkpoint(out)
    assert ckpt["meta"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in ckpt["encoder"].values() if v.is_floating_point())


def test_unusable_bf16_pretraining_is_one_line_before_any_output(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["-o", str(tmp_path / "a.pt"), "-i", str(image_folder), "--epochs", "1", "--precision", "bf16", *TINY])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision bf16: this CPU has no bf16 support" in err[0]
    assert list(tmp_path.iterdir()) == []

"""Fixes found by the codebase review (issue: trainer step / boundaries / contracts): each test failed before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smitunet.imageio import Geometry
from smitunet.utils.device import process_device
from smitunet.utils.files import json_safe, save_json


def _strict_json(text: str):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_geometry_messages_print_plain_numbers():
    a = Geometry((0.8, 0.8, 0.8), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))
    b = Geometry((1.0, 0.8, 0.8), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))
    assert a.matches(b) == "spacing (0.8, 0.8, 0.8) != (1.0, 0.8, 0.8)"


def test_integrity_message_for_float_labels_prints_plain_numbers(tmp_path):
    from smitunet.dataset.integrity import check_case_files
    from smitunet.imageio import write_image

    geo = Geometry((1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))
    write_image(np.zeros((4, 4, 4), np.float32), geo, tmp_path / "c_0000.nii.gz")
    write_image(np.full((4, 4, 4), 0.8, np.float32), geo, tmp_path / "c.nii.gz")
    problems, _ = check_case_files("c", [tmp_path / "c_0000.nii.gz"], tmp_path / "c.nii.gz", {0, 1})
    assert problems == ["case c: label c.nii.gz has non-integer values (e.g. 0.8)"]


def test_summary_files_are_strict_json(tmp_path):
    save_json(json_safe({"dice": float("nan"), "hd95": [float("inf"), np.float64("nan"), 1.5]}), tmp_path / "s.json")
    assert _strict_json((tmp_path / "s.json").read_text()) == {"dice": None, "hd95": [None, None, 1.5]}


def test_fold_validation_summary_is_strict_json_when_a_structure_is_absent(tmp_path, smitunet_dirs):
    """A case without label 2, predicted without it: Dice and HD95 undefined (NaN in memory, null on disk)."""
    from smitunet.evaluation.fold_validation import validate_fold
    from support.training import make_preprocessed_dataset, tiny_plans

    folder = make_preprocessed_dataset(smitunet_dirs["preprocessed"], num_cases=2)
    data = folder / "smitunetPlans_3d_fullres"
    seg = np.load(data / "tiny_001_seg.npy")
    seg[seg == 2] = 0
    np.save(data / "tiny_001_seg.npy", seg)

    class Background(torch.nn.Module):
        deep_supervision = False

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
            logits[:, 0] = 1.0
            return logits

    summary = validate_fold(Background(), tiny_plans(), "3d_fullres", data, ["tiny_000", "tiny_001"],
                            tmp_path / "validation", torch.device("cpu"), mirror_axes=None)
    assert np.isnan(summary["metric_per_case"][1]["metrics"]["2"]["hd95"])
    on_disk = _strict_json((tmp_path / "validation" / "summary.json").read_text())
    assert on_disk["metric_per_case"][1]["metrics"]["2"]["hd95"] is None
    assert on_disk["metric_per_case"][1]["metrics"]["2"]["dice"] is None and on_disk["mean"]["2"]["dice"] == 0.0


def test_cuda_index_is_kept_by_single_processes_and_rank_decides_under_torchrun():
    assert process_device(torch.device("cuda", 1), distributed=False, local_rank=0) == torch.device("cuda", 1)
    assert process_device(torch.device("cuda"), distributed=False, local_rank=0) == torch.device("cuda", 0)
    assert process_device(torch.device("cuda", 1), distributed=True, local_rank=3) == torch.device("cuda", 3)
    assert process_device(torch.device("cpu"), distributed=True, local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize("module", ["smitunet.training.cli", "smitunet.pretraining.cli"])
def test_train_and_pretrain_accept_cuda_n(module, capsys):
    import importlib

    parser = importlib.import_module(module).build_parser()
    args = ["-o", "x.pt", "-d", "1"] if "pretraining" in module else ["901", "3d_fullres", "0"]
    assert parser.parse_args([*args, "--device", "cuda:1"]).device == "cuda:1"  # argparse refused it before


def test_unknown_device_is_one_line():
    from smitunet.errors import SmitunetError
    from smitunet.utils.device import resolve_device

    with pytest.raises(SmitunetError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_demo_with_an_unwritable_work_dir_is_one_line(capsys):
    from smitunet.demo import main

    with pytest.raises(SystemExit) as exc:
        main(["--work_dir", "/proc/smitunet_nope"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "/proc/smitunet_nope" in err


def test_prediction_settings_record_the_folds_used(smitunet_dirs, tmp_path):
    from smitunet.inference.cli import main as predict_main
    from support.prediction import write_case as _write_case
    from support.prediction import save_tiny_model, tiny_plans as predict_plans

    save_tiny_model(smitunet_dirs["results"], predict_plans(), folds=(0, 1))
    geo = Geometry((1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (12, 10, 9))
    _write_case(tmp_path / "in", "a", geo)
    predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--disable_tta", "-npp", "0"])
    settings = json.loads((tmp_path / "out" / "prediction_settings.json").read_text())
    assert settings["folds"] == ["0", "1"]


def _partial_checkpoint(tmp_path):
    """Only the patch embedding and the first stage of the tiny network's encoder."""
    from smitunet.networks import create_network
    from support.training import tiny_plans

    kwargs = tiny_plans().configuration("3d_fullres").network.kwargs
    torch.manual_seed(5)
    enc = create_network("smit_tiny", **kwargs).encoder.state_dict()
    partial = {k: v for k, v in enc.items() if k.startswith(("patch_embed.", "layers.0.", "norm0."))}
    student = {k: v + 1.0 for k, v in enc.items()}
    torch.save(partial, tmp_path / "partial.pt")
    torch.save({"student": student, "teacher": enc}, tmp_path / "both.pt")
    return tmp_path / "partial.pt", tmp_path / "both.pt", enc, student


def test_accept_partial_pretrained_and_pretrained_branch_flags(smitunet_dirs, tmp_path, capsys):
    from smitunet.checkpoint_io import load_checkpoint
    from smitunet.training.cli import main as train_main
    from support.training import fold_dir, make_preprocessed_dataset

    make_preprocessed_dataset(smitunet_dirs["preprocessed"])
    partial, both, teacher, student = _partial_checkpoint(tmp_path)
    base = ["901", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", "1", "--num_workers", "0", "--disable_tta"]
    with pytest.raises(SystemExit) as exc:
        train_main([*base, "--pretrained", str(partial)])
    assert exc.value.code == 2 and "pass --accept_partial_pretrained" in capsys.readouterr().err
    train_main([*base, "--pretrained", str(partial), "--accept_partial_pretrained"])
    report = json.loads((fold_dir(smitunet_dirs["results"]) / "pretrained_report.json").read_text())
    assert 0 < report["matched_fraction"] < 0.9
    # The student branch is taken when asked for: its patch embedding is what the run started from.
    from smitunet.training.trainer import SMITTrainer

    class Spy(SMITTrainer):
        loaded = {}

        def load_pretrained(self, network, path):
            report = super().load_pretrained(network, path)
            Spy.loaded = {k: v.clone() for k, v in network.encoder.state_dict().items()}
            return report

    import sys
    sys.modules[__name__].Spy = Spy
    train_main([*base, "--pretrained", str(both), "--pretrained_branch", "student", "-tr", f"{__name__}:Spy"])
    assert torch.equal(Spy.loaded["patch_embed.proj.weight"], student["patch_embed.proj.weight"])
    train_main([*base, "--pretrained", str(both), "-tr", f"{__name__}:Spy"])
    assert torch.equal(Spy.loaded["patch_embed.proj.weight"], teacher["patch_embed.proj.weight"])
    assert load_checkpoint(fold_dir(smitunet_dirs["results"], "Spy") / "checkpoint_final.pt")["epoch"] == 1


def test_plugin_architecture_is_rebuilt_by_prediction_from_its_recorded_builder(smitunet_dirs, tmp_path, plugin_path,
                                                                                capsys):
    import subprocess
    import sys

    from smitunet.checkpoint_io import load_checkpoint
    from smitunet.inference.cli import main as predict_main
    from smitunet.training.cli import main as train_main
    from support.prediction import write_case as _write_case
    from support.training import REPO_ROOT, cli_env, fold_dir, make_preprocessed_dataset

    make_preprocessed_dataset(smitunet_dirs["preprocessed"])
    base = ["901", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", "1", "--num_workers", "0", "--disable_tta"]
    with pytest.raises(SystemExit) as exc:
        train_main([*base, "-tr", "smitunet_example_trainers.trainers:OwnNetworkWithoutBuilderTrainer"])
    assert exc.value.code == 2 and "set network_builder" in capsys.readouterr().err
    train_main([*base, "-tr", "smitunet_example_trainers.trainers:TwoConvTrainer"])
    ckpt = load_checkpoint(fold_dir(smitunet_dirs["results"], "TwoConvTrainer") / "checkpoint_final.pt")
    assert ckpt["network"]["builder"] == "smitunet_example_trainers.networks:build_two_conv"
    assert any(k.startswith("body.") for k in ckpt["state_dict"])
    geo = Geometry((1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (12, 10, 9))
    _write_case(tmp_path / "in", "a", geo)
    predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--disable_tta", "-npp", "0"])
    assert (tmp_path / "out" / "a.nii.gz").is_file()
    # Without the plug-in package the builder does not import: one line naming it, and nothing written.
    env = cli_env()  # no plug-in folder on the path
    run = subprocess.run([sys.executable, "-m", "smitunet.inference.cli", "-i", str(tmp_path / "in"), "-o",
                          str(tmp_path / "out2"), "--disable_tta", "-npp", "0"], env=env, capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=300)
    assert run.returncode == 2 and "smitunet_example_trainers.networks:build_two_conv cannot be imported" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out2").exists()


def test_one_training_checkpoint_validator_with_a_version_check(tmp_path):
    from smitunet.checkpoint_io import load_training_checkpoint
    from smitunet.errors import SmitunetError
    from smitunet.inference.predictor import FoldEnsemble

    good = {"format": "smitunet", "kind": "training", "version": 1, "network": {"name": "smit_tiny", "kwargs": {}},
            "state_dict": {}, "plans": {}, "configuration": "3d_fullres", "epoch": 1}
    cases = {"newer.pt": ({**good, "version": 99}, "version 99 is newer than this smitunet reads"),
             "pretraining.pt": ({"format": "smitunet", "kind": "pretraining", "encoder": {}},
                                "not a smitunet training checkpoint"),
             "partial.pt": ({k: v for k, v in good.items() if k != "plans"}, "missing plans")}
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        for load in (load_training_checkpoint, lambda p: FoldEnsemble([p], torch.device("cpu"))):
            with pytest.raises(SmitunetError, match=message):
                load(tmp_path / name)

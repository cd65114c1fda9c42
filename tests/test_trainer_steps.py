"""The trainer owns its step: plug-ins override ``train_step``; the fine-tuning recipe (layer-wise learning-rate
decay, encoder warm-up) by value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from smitunet.networks import create_network
from smitunet.pretraining.export import save_pretrained
from smitunet.training.cli import main as train_main
from smitunet.training.cli import build_parser, make_trainer
from smitunet.training.trainer import SMITTrainer, encoder_depth
from support.training import fold_dir, make_preprocessed_dataset, tiny_plans

ARGS = ["901", "3d_fullres", "0", "--epochs", "2", "--iters_per_epoch", "3", "--num_workers", "0", "--disable_tta"]


@pytest.fixture
def dataset(smitunet_dirs):
    make_preprocessed_dataset(smitunet_dirs["preprocessed"])
    return smitunet_dirs


def test_plugin_overriding_only_train_step_trains_through_the_cli(dataset, plugin_path, capsys):
    train_main([*ARGS, "-tr", "smitunet_example_trainers.trainers:SkipNonFiniteTrainer"])
    fold = fold_dir(dataset["results"], "SkipNonFiniteTrainer")
    steps = [line.split() for line in (fold / "steps.txt").read_text().splitlines()]
    assert [int(i) for i, _ in steps] == list(range(6)) and all(taken == "1" for _, taken in steps)
    assert (fold / "checkpoint_final.pt").is_file() and (fold / "validation" / "summary.json").is_file()


def _encoder_checkpoint(tmp_path: Path) -> Path:
    """A smitunet pretraining file whose encoder fits the tiny plans' network."""
    kwargs = tiny_plans().configuration("3d_fullres").network.kwargs
    torch.manual_seed(123)
    net = create_network("smit_tiny", **{k: v for k, v in kwargs.items() if k != "deep_supervision"})
    path = tmp_path / "smit.pt"
    save_pretrained(path, net.encoder, {"name": "smit_tiny", "kwargs": net.network_kwargs}, {"preset": "smit_tiny"})
    return path


def _trainer(extra: list[str], cls=SMITTrainer):
    trainer = make_trainer(build_parser().parse_args([*ARGS, *extra]))
    return cls(trainer.ctx) if cls is not SMITTrainer else trainer


def test_encoder_depth_of_parameter_names():
    assert [encoder_depth(n) for n in ("patch_embed.proj.weight", "mask_token", "layers.0.blocks.0.attn.qkv.weight",
                                       "norm0.weight", "layers.2.downsample.reduction.weight", "norm3.bias")] == \
        [0, 0, 1, 1, 3, 4]


def test_layer_wise_decay_groups_and_learning_rates(dataset, tmp_path):
    trainer = _trainer(["--pretrained", str(_encoder_checkpoint(tmp_path))])
    network = trainer.build_network(trainer.network_config())
    groups = trainer.parameter_groups(network)
    stages = network.encoder.num_stages  # 4 in the tiny plans
    lr, decay = trainer.initial_lr, trainer.layer_decay
    assert [g["lr"] for g in groups] == pytest.approx([lr * decay ** (stages + 1 - d) for d in range(stages + 2)])
    names = {id(p): n for n, p in network.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == {"encoder.mask_token", "encoder.patch_embed.proj.weight",
                                                           "encoder.patch_embed.proj.bias",
                                                           "encoder.patch_embed.norm.weight",
                                                           "encoder.patch_embed.norm.bias"}
    for d in range(1, stages + 1):
        assert {names[id(p)].split(".")[1] for p in groups[d]["params"]} == {"layers", f"norm{d - 1}"}
        assert all(names[id(p)].startswith((f"encoder.layers.{d - 1}.", f"encoder.norm{d - 1}."))
                   for p in groups[d]["params"])
    assert all(not names[id(p)].startswith("encoder.") for p in groups[-1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(network.parameters()))
    # From scratch there is nothing to protect: one group at the full rate.
    scratch = _trainer([])
    assert [g["lr"] for g in scratch.parameter_groups(network)] == [scratch.initial_lr]


class WarmupTrainer(SMITTrainer):
    encoder_warmup_iters = 3


def test_encoder_warmup_freezes_the_encoder_then_releases_it(dataset, tmp_path):
    from smitunet.training.loop import TrainingLoop

    trainer = _trainer(["--pretrained", str(_encoder_checkpoint(tmp_path))], WarmupTrainer)
    loop = TrainingLoop(trainer)
    loop.setup()
    trainer.loss_scale = 1.0
    from smitunet.training.augmentation import no_augmentation_transforms
    from smitunet.training.data import PreprocessedCases

    cases = PreprocessedCases(loop.data_folder, loop.train_cases)
    loader = trainer.build_val_loader(cases, [0, 1])  # patches at the network's size, no augmentation
    to_tensors = no_augmentation_transforms()
    snapshot = lambda part: {k: v.clone() for k, v in part.state_dict().items()}  # noqa: E731
    encoder, decoder = trainer.network.encoder, trainer.network.up_blocks
    start_enc, start_dec = snapshot(encoder), snapshot(decoder)
    for _ in range(3):
        trainer.train_step(to_tensors(**loader.generate_train_batch()))
    assert all(torch.equal(start_enc[k], v) for k, v in encoder.state_dict().items())
    assert not all(torch.equal(start_dec[k], v) for k, v in decoder.state_dict().items())
    trainer.train_step(to_tensors(**loader.generate_train_batch()))
    assert trainer.iteration == 4
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(start_enc[k], v)]
    assert any(k.startswith("layers.") for k in changed) and "patch_embed.proj.weight" in changed


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no oneDNN bf16")
def test_bf16_precision_runs_the_steps_under_bf16_autocast_without_loss_scaling(dataset):
    from smitunet.training.augmentation import no_augmentation_transforms
    from smitunet.training.data import PreprocessedCases
    from smitunet.training.loop import TrainingLoop

    seen = []

    class Probe(SMITTrainer):
        def build_loss(self):
            loss = super().build_loss()
            original = loss.forward

            def forward(output, target):  # where the step's forward has just run
                seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output[0].dtype))
                return original(output, target)

            loss.forward = forward
            return loss

    trainer = _trainer(["--device", "cpu", "--precision", "bf16"], Probe)
    assert trainer.autocast_dtype == torch.bfloat16
    loop = TrainingLoop(trainer)
    loop.setup()
    assert not trainer.grad_scaler.is_enabled()  # bf16 keeps float32's exponent range: nothing to scale
    loader = trainer.build_val_loader(PreprocessedCases(loop.data_folder, loop.train_cases), [0, 1])
    batch = no_augmentation_transforms()(**loader.generate_train_batch())
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    loss = trainer.train_step(batch)
    assert seen == [(True, torch.bfloat16, torch.bfloat16)] and np.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.network.parameters())  # the weights stay float32
    assert any(not torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())
    trainer.validation_step(batch)
    assert seen[-1][:2] == (True, torch.bfloat16)
    # The default on the CPU is fp32: no autocast at all.
    assert _trainer(["--device", "cpu"]).autocast_dtype is None


def test_unusable_bf16_training_is_one_line_before_any_output(dataset, capsys, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(SystemExit) as stop:
        train_main([*ARGS, "--device", "cpu", "--precision", "bf16"])
    assert stop.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision bf16: this CPU has no bf16 support in oneDNN" in err[0]
    assert not fold_dir(dataset["results"], "SMITTrainer").exists()

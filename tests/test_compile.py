"""``--compile``: the flag reaches trainer, predictor and pretraining; checkpoints keep their keys; a compile failure
falls back to eager with one warning line and the eager results.

``torch.compile`` itself is replaced by stand-ins (a recorder that returns the module's own call, or one that fails
when called or on the first forward): a real Inductor compile of even a tiny Swin U-Net takes minutes on 2 shared
cores. One test runs the real Dynamo front end on a single convolution, with a backend that raises.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from smitunet.checkpoint_io import load_training_checkpoint
from smitunet.imageio import Geometry, write_image
from smitunet.inference.cli import build_parser as predict_parser
from smitunet.inference.cli import options_from_args
from smitunet.inference.predictor import PredictionOptions, Predictor
from smitunet.networks.registry import build_from_config
from smitunet.pretraining import cli as pretrain_cli
from smitunet.pretraining.config import PretrainSettings
from smitunet.pretraining.trainer import PretrainingRun, RunOptions
from smitunet.training.cli import main as train_main
from smitunet.utils.compile import CompiledNetwork, compile_mode, maybe_compile
from support.prediction import save_tiny_model, tiny_plans
from support.training import fold_dir, make_preprocessed_dataset


class Recorder:
    """Stands in for ``torch.compile``: records what it was given, returns the module's own call (eager)."""

    def __init__(self):
        self.calls: list[tuple[nn.Module, str | None]] = []

    def __call__(self, model, mode=None, **kwargs):
        self.calls.append((model, mode))
        return lambda *a, **k: model(*a, **k)


def compile_raises(model, mode=None, **kwargs):
    raise RuntimeError("no C compiler\nsecond line of the report")


def fails_on_first_call(model, mode=None, **kwargs):
    def compiled(*args, **kw):
        raise RuntimeError("backend crashed while compiling")
    return compiled


@pytest.fixture
def warnings_logged():
    """Warning lines of the ``smitunet`` logger, whether or not a CLI has configured it."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                lines.append(record.getMessage())

    handler = Collect()
    log = logging.getLogger("smitunet")
    log.addHandler(handler)
    yield lines
    log.removeHandler(handler)


def compile_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("--compile:")]


# -- the wrapper ------------------------------------------------------------------------------------------------------
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv3d(2, 3, 1))


def test_off_returns_the_network_itself_and_modes_follow_the_device():
    net = tiny_net()
    assert maybe_compile(net, False, torch.device("cpu")) is net
    assert compile_mode(torch.device("cpu")) is None
    assert compile_mode(torch.device("cuda")) == "reduce-overhead"                # CUDA graphs: static shapes
    assert compile_mode(torch.device("cuda"), static_shapes=False) is None
    assert compile_mode(torch.device("cuda"), distributed=True) is None


def test_wrapper_keeps_the_state_dict_keys_and_train_eval_reach_the_network(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(torch, "compile", recorder)
    net = tiny_net()
    keys = list(net.state_dict())
    wrapped = maybe_compile(net, True, torch.device("cpu"))
    assert isinstance(wrapped, CompiledNetwork) and wrapped.compiled and recorder.calls == [(net, None)]
    assert list(net.state_dict()) == keys and not any("_orig_mod" in k for k in net.state_dict())
    assert [n for n, _ in wrapped.named_parameters()] == [f"network.{k}" for k in keys]   # no second copy
    wrapped.eval()
    assert not net.training
    x = torch.randn(1, 1, 4, 4, 4)
    torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=0)


def test_the_real_compiled_module_stays_out_of_the_wrappers_state_dict():
    # torch.compile returns a Module around the network (compiled lazily, at the first call: nothing runs here)
    net = tiny_net()
    wrapped = maybe_compile(net, True, torch.device("cpu"))
    assert isinstance(wrapped._compiled, torch.nn.Module)
    assert list(wrapped.state_dict()) == [f"network.{k}" for k in net.state_dict()]
    assert len(list(wrapped.parameters())) == len(list(net.parameters()))


@pytest.mark.parametrize("fake", [compile_raises, fails_on_first_call], ids=["at_compile", "at_first_call"])
def test_a_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, warnings_logged, fake):
    monkeypatch.setattr(torch, "compile", fake)
    net = tiny_net()
    wrapped = CompiledNetwork(net)
    x = torch.randn(2, 1, 5, 4, 3)
    outs = [wrapped(x) for _ in range(3)]
    assert not wrapped.compiled and wrapped.failure.startswith("RuntimeError: ")
    assert "\n" not in wrapped.failure
    for out in outs:
        torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    assert len(compile_lines(warnings_logged)) == 1 and "continuing in eager mode" in warnings_logged[0]


def test_real_dynamo_with_a_failing_backend_falls_back(monkeypatch, warnings_logged):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("backend refuses")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real_compile(model, backend=broken_backend))
    torch._dynamo.reset()
    try:
        net = tiny_net()
        wrapped = CompiledNetwork(net)
        x = torch.randn(1, 1, 4, 4, 4)
        out = wrapped(x)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    assert not wrapped.compiled and len(compile_lines(warnings_logged)) == 1


def test_an_error_of_the_input_after_compiled_calls_is_raised_not_hidden(monkeypatch, warnings_logged):
    monkeypatch.setattr(torch, "compile", Recorder())
    wrapped = CompiledNetwork(tiny_net())
    wrapped(torch.randn(1, 1, 4, 4, 4))
    with pytest.raises(RuntimeError):
        wrapped(torch.randn(1, 2, 4, 4, 4))           # wrong channel count: the network's own error
    assert wrapped.compiled and not compile_lines(warnings_logged)


# -- training ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def dataset(smitunet_dirs):
    make_preprocessed_dataset(smitunet_dirs["preprocessed"])
    return smitunet_dirs


def _train(extra: list[str]) -> None:
    train_main(["901", "3d_fullres", "0", "--epochs", "1", "--iters_per_epoch", "2", "--num_workers", "0",
                "--disable_tta", "--device", "cpu", *extra])


def test_train_compile_reaches_the_step_and_checkpoints_keep_their_keys(dataset, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(torch, "compile", recorder)
    _train(["--compile"])
    assert len(recorder.calls) == 1
    compiled, mode = recorder.calls[0]
    assert getattr(compiled, "network_name", None) == "smit_tiny" and mode is None   # the bare network, CPU mode
    ckpt = load_training_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pt")
    eager_keys = list(build_from_config(ckpt.network["name"], ckpt.network["kwargs"]).state_dict())
    assert list(ckpt.state_dict) == eager_keys


def test_train_falls_back_to_eager_with_one_warning_line_and_the_eager_weights(dataset, monkeypatch, capsys):
    _train([])
    final = fold_dir(dataset["results"]) / "checkpoint_final.pt"
    eager = load_training_checkpoint(final).state_dict
    monkeypatch.setattr(torch, "compile", fails_on_first_call)
    capsys.readouterr()
    _train(["--compile"])
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "--compile" in line]) == 1, err
    fallback = load_training_checkpoint(final).state_dict
    assert list(fallback) == list(eager)
    for key in eager:
        torch.testing.assert_close(fallback[key], eager[key], rtol=0, atol=0)


# -- prediction -------------------------------------------------------------------------------------------------------
def test_predict_flag_and_options():
    args = predict_parser().parse_args(["-i", "in", "-o", "out", "--compile"])
    assert options_from_args(args).compile is True
    assert options_from_args(predict_parser().parse_args(["-i", "in", "-o", "out"])).compile is False


def test_predictor_compiles_the_forward_and_falls_back_to_the_eager_probabilities(smitunet_dirs, monkeypatch,
                                                                                   warnings_logged):
    model_dir = save_tiny_model(smitunet_dirs["results"], tiny_plans(), folds=(0, 1))
    data = np.random.default_rng(1).normal(size=(1, 20, 18, 16)).astype(np.float32)
    eager = Predictor.from_model_folder(model_dir, ["0", "1"], options=PredictionOptions(
        use_tta=False, device="cpu", num_processes=0)).predict_case(data)
    recorder = Recorder()
    monkeypatch.setattr(torch, "compile", recorder)
    options = PredictionOptions(use_tta=False, device="cpu", num_processes=0, compile=True)
    predictor = Predictor.from_model_folder(model_dir, ["0", "1"], options=options)
    assert isinstance(predictor.model.forward_network, CompiledNetwork) and len(recorder.calls) == 1
    np.testing.assert_array_equal(predictor.predict_case(data), eager)
    monkeypatch.setattr(torch, "compile", fails_on_first_call)
    predictor = Predictor.from_model_folder(model_dir, ["0", "1"], options=options)
    np.testing.assert_array_equal(predictor.predict_case(data), eager)
    assert len(compile_lines(warnings_logged)) == 1


# -- pretraining ------------------------------------------------------------------------------------------------------
def _pretrain_run(compile: bool) -> PretrainingRun:
    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, 20, 20, 20)).astype(np.float32) for _ in range(2)]
    options = RunOptions(output=Path("unused.pt"), preset="smit_tiny", patch=[16, 16, 16],
                         network_overrides={"num_stages": 3}, epochs=1, iters_per_epoch=2, batch_size=1,
                         num_workers=0, compile=compile)
    torch.manual_seed(0)
    return PretrainingRun(options, PretrainSettings(), volumes, 1)


def test_pretraining_compiles_student_and_teacher_and_keeps_their_keys(monkeypatch, warnings_logged):
    eager = _pretrain_run(False)
    recorder = Recorder()
    monkeypatch.setattr(torch, "compile", recorder)
    run = _pretrain_run(True)
    assert [m for m, _ in recorder.calls] == [run.student, run.teacher]
    assert list(run.student.state_dict()) == list(eager.student.state_dict())
    assert list(run.state()["teacher"]) == list(eager.state()["teacher"])
    monkeypatch.setattr(torch, "compile", fails_on_first_call)
    run = _pretrain_run(True)
    stream, eager_stream = run.batch_stream(), eager.batch_stream()
    for step in range(2):
        got, want = run.train_step(step, next(stream)), eager.train_step(step, next(eager_stream))
        assert got == want
    assert len(compile_lines(warnings_logged)) == 2            # one line each for the student and the teacher


def test_pretrain_cli_passes_the_flag(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    write_image(rng.normal(100, 20, size=(20, 20, 20)).astype(np.float32),
                Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (20, 20, 20)),
                folder / "img_0.nii.gz")
    seen = {}

    class FakeRun:
        def __init__(self, options, *args, **kwargs):
            seen["options"] = options

        def run(self, continue_training=False):
            pass

    monkeypatch.setattr(pretrain_cli, "PretrainingRun", FakeRun)
    pretrain_cli.main(["-o", str(tmp_path / "smit.pt"), "-i", str(folder), "--preset", "smit_tiny", "--patch",
                       "16", "16", "16", "--device", "cpu", "--num_workers", "0", "--compile"])
    assert seen["options"].compile is True

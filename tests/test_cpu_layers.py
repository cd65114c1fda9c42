"""The CPU fast path of the convolutional blocks: instance norm run by the group-norm kernel. It must equal the plain
torch layer (by value), keep the state-dict layout, and stay out of tracing (ONNX / TorchScript export) and of
``plain_layers``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from smitunet.networks import create_network
from smitunet.networks.blocks import InstanceNorm2d, InstanceNorm3d, plain_layers


def _twin(layer: nn.Module) -> nn.Module:
    return plain_layers(copy.deepcopy(layer))


@pytest.mark.parametrize("fast_cls,plain_cls,shape", [(InstanceNorm3d, nn.InstanceNorm3d, (2, 5, 6, 7, 4)),
                                                      (InstanceNorm2d, nn.InstanceNorm2d, (3, 4, 9, 6))])
def test_instance_norm_by_group_norm_equals_instance_norm(fast_cls, plain_cls, shape):
    torch.manual_seed(1)
    fast, plain = fast_cls(shape[1], affine=True), plain_cls(shape[1], affine=True)
    with torch.no_grad():
        fast.weight.uniform_(0.5, 1.5)
        fast.bias.uniform_(-1, 1)
    plain.load_state_dict(fast.state_dict())  # same keys, so checkpoints load either way
    x = (torch.randn(shape) * 3 + 2).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = fast(x), plain(x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def test_group_norm_path_in_training_and_inference_but_not_when_tracing_or_plain(monkeypatch):
    calls = []
    original = torch.nn.functional.group_norm

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "group_norm", spy)
    norm = InstanceNorm3d(3, affine=True)
    x = torch.randn(1, 3, 4, 4, 4)
    norm(x)
    with torch.no_grad():
        norm(x)
    assert len(calls) == 2
    torch.jit.trace(norm, x, check_trace=False)  # the check would rerun it eagerly
    assert len(calls) == 2
    plain_layers(norm)(x)
    assert len(calls) == 2


def _tiny():
    torch.manual_seed(0)
    return create_network("smit_tiny", 1, 3, [32, 32, 32], num_stages=2, deep_supervision=True)


def test_a_training_step_of_the_whole_network_equals_plain_layers():
    fast = _tiny()
    plain = plain_layers(copy.deepcopy(fast))
    assert any(isinstance(m, InstanceNorm3d) for m in fast.modules())
    torch.manual_seed(3)
    x = torch.randn(2, 1, 32, 32, 32)
    losses = []
    for net in (fast, plain):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        step_losses = []
        for _ in range(2):
            opt.zero_grad()
            loss = sum(o.square().mean() for o in net(x))
            loss.backward()
            opt.step()
            step_losses.append(loss.item())
        losses.append(step_losses)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_inference_equals_plain_layers():
    fast = _tiny().eval()
    fast.deep_supervision = False
    plain = plain_layers(copy.deepcopy(fast))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)

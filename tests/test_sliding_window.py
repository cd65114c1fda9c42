import numpy as np
import pytest
import torch
from torch import nn

from smitunet.inference.sliding_window import gaussian_importance_map, predict_sliding_window, tile_starts


class Pointwise(nn.Module):
    """A 1x1x1 conv: every tiling must give exactly the full-volume result."""

    def __init__(self, cin=2, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(cin, k, 1)

    def forward(self, x):
        return self.conv(x)


class PositionBias(nn.Module):
    """Output = a fixed map that depends on the position inside the tile (not flip-equivariant)."""

    def __init__(self, patch, k=2):
        super().__init__()
        self.register_buffer("bias", torch.arange(k * int(np.prod(patch)), dtype=torch.float32).reshape(k, *patch))

    def forward(self, x):
        return self.bias.expand(x.shape[0], *self.bias.shape) + 0 * x[:, :1]


@pytest.mark.parametrize("shape", [(9, 13, 11), (3, 5, 4), (8, 8, 8), (20, 7, 9)])
@pytest.mark.parametrize("mirror", [None, (0, 1, 2)])
def test_pointwise_model_matches_full_forward(shape, mirror):
    model = Pointwise()
    data = torch.randn(2, *shape)
    out = predict_sliding_window(model, data, (8, 6, 6), 3, step_size=0.5, mirror_axes=mirror, tile_batch_size=3)
    expected = model(data[None])[0]
    assert out.shape == (3, *shape) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_mirroring_averages_flipped_predictions():
    patch = (4, 6, 6)
    model = PositionBias(patch)
    data = torch.zeros(1, *patch)
    out = predict_sliding_window(model, data, patch, 2, mirror_axes=(0,))
    torch.testing.assert_close(out, (model.bias + model.bias.flip(1)) / 2)
    out_all = predict_sliding_window(model, data, patch, 2, mirror_axes=(0, 1, 2))
    flips = [model.bias.flip(d) if d else model.bias for d in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]]
    torch.testing.assert_close(out_all, torch.stack(flips).mean(0))


def test_gaussian_weighting_of_overlapping_tiles():
    patch = (4, 4, 4)
    model = PositionBias(patch, k=1)
    data = torch.zeros(1, 4, 4, 6)  # two tiles along x: starts 0 and 2
    out = predict_sliding_window(model, data, patch, 1, step_size=0.5, mirror_axes=None)
    g = gaussian_importance_map(patch)
    b = model.bias[0]
    # x = 2..3 is covered by both tiles: tile 1 at local x 2..3, tile 2 at local x 0..1
    w1, w2 = g[..., 2:4], g[..., 0:2]
    expected = (b[..., 2:4] * w1 + b[..., 0:2] * w2) / (w1 + w2)
    torch.testing.assert_close(out[0, :, :, 2:4], expected)
    torch.testing.assert_close(out[0, :, :, :2], b[..., :2])
    torch.testing.assert_close(out[0, :, :, 4:], b[..., 2:])


def test_gaussian_map_peaks_in_the_centre_and_is_positive():
    g = gaussian_importance_map((5, 7, 9))
    assert g.shape == (5, 7, 9)
    assert float(g.max()) == pytest.approx(1.0) and float(g[2, 3, 4]) == pytest.approx(1.0)
    assert float(g.min()) > 0
    torch.testing.assert_close(g, g.flip(0).flip(1).flip(2))


def test_tile_starts_cover_the_image():
    starts = tile_starts((10, 64, 5), (10, 24, 8), 0.5)
    assert starts[0] == [0] and starts[2] == [0]
    assert starts[1][0] == 0 and starts[1][-1] == 64 - 24
    assert max(np.diff(starts[1])) <= 12
    with pytest.raises(ValueError):
        tile_starts((10, 10, 10), (4, 4, 4), 0)


def test_stats_batching_deep_supervision_and_training_flag():
    class DeepSup(Pointwise):
        def forward(self, x):
            y = self.conv(x)
            return [y, y[:, :, ::2, ::2, ::2]]

    model = DeepSup()
    model.train()
    data = torch.randn(2, 12, 12, 12)
    stats = {}
    out = predict_sliding_window(model, data, (8, 8, 8), 3, mirror_axes=(1, 2), tile_batch_size=4, stats=stats)
    assert model.training  # restored
    assert stats["tiles"] == 8 and stats["forward_passes"] == 8 * 4 and stats["forward_seconds"] > 0
    torch.testing.assert_close(out, model.conv(data[None])[0], atol=1e-5, rtol=1e-5)


def test_numpy_input_and_wrong_channel_count():
    model = Pointwise()
    out = predict_sliding_window(model, np.random.rand(2, 6, 6, 6).astype(np.float32), (4, 4, 4), 3, mirror_axes=None)
    assert out.shape == (3, 6, 6, 6)
    with pytest.raises(ValueError, match="num_classes"):
        predict_sliding_window(model, torch.zeros(2, 6, 6, 6), (4, 4, 4), 5, mirror_axes=None)

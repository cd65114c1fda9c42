"""A plug-in architecture: not in smitunet's registry, rebuilt at prediction through the recorded builder."""

from __future__ import annotations

from torch import nn


class TwoConvNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), nn.LeakyReLU(),
                                  nn.Conv3d(width, num_classes, 1))
        self.deep_supervision = False

    def forward(self, x):
        out = self.body(x)
        return [out] if self.deep_supervision else out

    def deep_supervision_scales(self):
        return [[1.0, 1.0, 1.0]]


def build_two_conv(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """Called as builder(name, **kwargs) with the plans' network kwargs; uses only what it needs."""
    return TwoConvNet(in_channels, num_classes)

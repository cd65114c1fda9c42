"""Networks: the SMIT Swin U-Net presets, the convolutional baseline, pretrained-checkpoint adaptation."""

from smitunet.networks.registry import available_presets, create_network, get_preset

__all__ = ["available_presets", "create_network", "get_preset"]

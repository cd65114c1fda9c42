"""smitunet: self-configuring 3D segmentation with a SMIT Swin-transformer U-Net."""

__version__ = "0.1.0"

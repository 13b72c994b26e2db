"""nnal: active learning for medical image segmentation on nnU-Net v2."""

__version__ = "0.1.0"

"""Reading and writing images and masks."""

from .dataset import MaskItem, default_data_root, read_dataset
from .images import read_image, read_mask, write_mask_png, write_overlay_png

__all__ = ["MaskItem", "default_data_root", "read_dataset", "read_image", "read_mask", "write_mask_png", "write_overlay_png"]

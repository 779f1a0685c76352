"""Framework-neutral core: layouts, checkpoint format. Imports neither torch nor jax."""

from lt8.core.checkpoint import WEIGHT_FORMATS, format_name, kernel_to_weight, weight_to_kernel
from lt8.core.layouts import get_inverse_transform_indices, undo_layout

__all__ = [
    "WEIGHT_FORMATS",
    "format_name",
    "get_inverse_transform_indices",
    "kernel_to_weight",
    "undo_layout",
    "weight_to_kernel",
]

"""The checkpoint format shared by lt8's torch and JAX frontends (and bitsandbytes).

A quantized linear layer is stored under bitsandbytes' keys:

* ``weight``: int8 (out_features, in_features), row-major (``CB``);
* ``SCB``: float32 (out_features,), the absmax of each weight row;
* ``bias``: optional (out_features,);
* ``weight_format``: uint8 scalar, 0 for row-major (1..3 name cuBLASLt's tiled orders, which
  only old bitsandbytes checkpoints use; lt8 always writes 0).

Flax stores kernels as (in_features, features); lt8's Flax modules keep the int8 weight in the
checkpoint's (out, in) orientation so no transpose happens at run time. The one mapping from a
float Flax kernel to a checkpoint weight is :func:`kernel_to_weight`.
"""

from __future__ import annotations

WEIGHT_FORMATS = {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
KEY_WEIGHT, KEY_SCB, KEY_BIAS, KEY_FORMAT = "weight", "SCB", "bias", "weight_format"


def format_name(code: int) -> str:
    """The layout name of a ``weight_format`` code."""
    for name, c in WEIGHT_FORMATS.items():
        if c == code:
            return name
    raise ValueError(f"weight_format must be one of {sorted(WEIGHT_FORMATS.values())}, got {code}")


def kernel_to_weight(kernel):
    """A Flax ``Dense`` kernel (in, out) as a torch/bitsandbytes weight (out, in)."""
    return kernel.T


def weight_to_kernel(weight):
    """A torch/bitsandbytes weight (out, in) as a Flax ``Dense`` kernel (in, out)."""
    return weight.T

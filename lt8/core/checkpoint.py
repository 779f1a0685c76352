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


# --- framework-neutral conversion helpers (numpy in, numpy out) ------------------------------


def to_numpy(a):
    """``a`` (a torch tensor on any device, a jax or numpy array, a scalar) as a numpy array.

    torch's bfloat16 has no numpy dtype of its own: it becomes ``ml_dtypes.bfloat16`` when that
    package (a jax dependency) is installed, else float32 (which holds every bfloat16 exactly).
    """
    import numpy as np

    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor; torch is already imported
        t = a.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            try:
                import ml_dtypes

                return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            except ImportError:
                return t.to(torch.float32).numpy()
        return t.numpy()
    return np.asarray(a)


def read_linear(state_dict, prefix: str = "") -> dict:
    """Reads one linear layer from a torch-style state dict (``nn.Linear`` or ``Linear8bitLt``).

    Values may be torch tensors or numpy/jax arrays. Returns numpy arrays under the checkpoint
    keys: ``weight`` (out, in) float or int8 as stored, ``SCB`` float32 (out,) or None (a float
    checkpoint), ``bias`` or None, and ``weight_format`` as a layout name ("row" unless an old
    bitsandbytes checkpoint stores a tiled weight).
    """
    import numpy as np

    if prefix + KEY_WEIGHT not in state_dict:
        raise KeyError(f"state dict has no {prefix + KEY_WEIGHT!r} (keys: {sorted(state_dict)})")
    weight = to_numpy(state_dict[prefix + KEY_WEIGHT])
    scb = state_dict.get(prefix + KEY_SCB)
    bias = state_dict.get(prefix + KEY_BIAS)
    fmt = state_dict.get(prefix + KEY_FORMAT)
    fmt_code = WEIGHT_FORMATS["row"] if fmt is None else int(to_numpy(fmt).reshape(()))
    if scb is None:
        if weight.dtype == np.int8:
            raise ValueError(f"{prefix + KEY_WEIGHT} is int8 but the state dict has no {prefix + KEY_SCB}")
        if weight.ndim != 2:
            raise ValueError(f"{prefix + KEY_WEIGHT} must be 2-D (out, in), got shape {weight.shape}")
    else:
        scb = to_numpy(scb).astype(np.float32)
        if weight.dtype != np.int8:
            raise ValueError(f"{prefix + KEY_WEIGHT} must be int8 next to {prefix + KEY_SCB}, got {weight.dtype}")
        if scb.ndim != 1:
            raise ValueError(f"{prefix + KEY_SCB} must be 1-D (out,), got shape {scb.shape}")
    return {
        KEY_WEIGHT: weight,
        KEY_SCB: scb,
        KEY_BIAS: None if bias is None else to_numpy(bias),
        KEY_FORMAT: format_name(fmt_code),
    }


def write_linear(CB, SCB, bias=None, prefix: str = "") -> dict:
    """A quantized linear layer as a state dict of numpy arrays under the checkpoint keys:
    ``weight`` int8 (out, in) row-major, ``SCB`` float32 (out,), ``bias`` when given, and
    ``weight_format`` = 0 (uint8 scalar). Loadable by ``Linear8bitLt.load_state_dict`` after
    ``torch.from_numpy`` of each value."""
    import numpy as np

    out = {
        prefix + KEY_WEIGHT: np.ascontiguousarray(to_numpy(CB)),
        prefix + KEY_SCB: np.ascontiguousarray(to_numpy(SCB), dtype=np.float32),
    }
    if bias is not None:
        out[prefix + KEY_BIAS] = np.ascontiguousarray(to_numpy(bias))
    out[prefix + KEY_FORMAT] = np.array(WEIGHT_FORMATS["row"], dtype=np.uint8)
    return out

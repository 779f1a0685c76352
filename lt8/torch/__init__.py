"""lt8's PyTorch frontend: ops under ``torch.ops.lt8`` and, in lt8's vocabulary (shared with
``lt8.jax``), :mod:`lt8.torch.functional`; ``Linear8bitLt``, ``replace_linear``;
``save_quantized``/``load_quantized`` (lt8's safetensors checkpoints, :mod:`lt8.torch.checkpoint`).

bitsandbytes' names are in the bitsandbytes-compatible ``lt8.nn``, ``lt8.functional`` and
``lt8.autograd``.
"""

from lt8.torch import (  # noqa: F401  (define and register the ops)
    _kernels,
    _ops,
    functional,
    parallel,  # noqa: F401  (tensor-parallel layers)
)
from lt8.torch.autograd import MatmulLtState
from lt8.torch.checkpoint import load_quantized, save_quantized
from lt8.torch.nn import Int8Params, Linear8bitLt, replace_linear

__all__ = [
    "Int8Params",
    "Linear8bitLt",
    "MatmulLtState",
    "functional",
    "load_quantized",
    "replace_linear",
    "save_quantized",
]


def __getattr__(name: str):
    # bitsandbytes' ``matmul`` was exported here before lt8.autograd held it: old code works.
    if name == "matmul":
        from lt8.autograd import matmul

        return matmul
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""lt8's PyTorch frontend: ops under ``torch.ops.lt8``, ``Linear8bitLt``, ``replace_linear``,
``save_quantized``/``load_quantized`` (lt8's safetensors checkpoints).

The bitsandbytes-compatible spellings are ``lt8.nn``, ``lt8.functional`` and ``lt8.autograd``.
"""

from lt8.torch import (  # noqa: F401  (define and register the ops)
    _kernels,
    _ops,
    functional,
    parallel,  # noqa: F401  (tensor-parallel layers)
)
from lt8.torch.autograd import MatmulLtState, matmul
from lt8.torch.nn import Int8Params, Linear8bitLt, load_quantized, replace_linear, save_quantized

__all__ = [
    "Int8Params",
    "Linear8bitLt",
    "MatmulLtState",
    "functional",
    "load_quantized",
    "matmul",
    "replace_linear",
    "save_quantized",
]

"""lt8 for JAX and Flax: LLM.int8() ops on lt8's kernels through XLA FFI.

* functional ops (:mod:`lt8.jax.ops`, the names and arguments of ``lt8.torch.functional``):
  ``linear`` (the fused op, with a custom VJP), ``linear_fp`` (float master weight),
  ``weight_linear``, ``quantize_weight`` (a (out, in) weight), ``quantize_kernel`` (a Flax
  (in, out) kernel), ``quantize_rows``, ``int8_gemm``, ``dequant_epilogue``, ...
* ``Dense8bit``: a Flax linen layer; ``lt8.jax.nnx.Linear8bit``: its NNX twin;
* sharded weights under ``jax.jit`` run on XLA's partitioner (:mod:`lt8.jax.partitioning`);
  ``shard_linear`` (:mod:`lt8.jax.sharding`) places a weight column- or row-parallel.

Importing this package registers the FFI targets (``lt8_<op>``, platforms "cpu" and, in a CUDA
build, "CUDA"). It never imports torch.
"""

from lt8.jax import _ffi  # noqa: F401  (registers the FFI targets)
from lt8.jax.checkpoint import (
    load_variables,
    save_variables,
    tensors_to_variables,
    variables_to_tensors,
)
from lt8.jax.linen import Dense8bit
from lt8.jax.ops import (
    dequant_epilogue,
    dequantize_rows,
    dequantize_weight,
    int8_gemm,
    linear,
    linear_fp,
    quantize_kernel,
    quantize_rows,
    quantize_weight,
    transform_layout,
    weight_linear,
)
from lt8.jax.sharding import shard_linear

__all__ = [
    "Dense8bit",
    "dequant_epilogue",
    "dequantize_rows",
    "dequantize_weight",
    "int8_gemm",
    "linear",
    "linear_fp",
    "load_variables",
    "nnx",
    "quantize_kernel",
    "quantize_rows",
    "quantize_weight",
    "save_variables",
    "shard_linear",
    "tensors_to_variables",
    "transform_layout",
    "variables_to_tensors",
    "weight_linear",
]


def __getattr__(name: str):
    # The NNX twin imports flax.nnx, which linen-only users need not pay for.
    if name == "nnx":
        import importlib

        return importlib.import_module("lt8.jax.nnx")
    raise AttributeError(f"module 'lt8.jax' has no attribute {name!r}")

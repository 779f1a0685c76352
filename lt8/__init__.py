"""lt8: LLM.int8() for PyTorch and JAX/Flax from one CUDA kernel source.

Vector-wise int8 matrix multiplication with fp16 outlier decomposition (Dettmers et al., 2022):
weights are stored as int8 rows plus one float32 scale per row; activations are quantized per
row on the fly, and the few activation columns holding large values ("outliers") are multiplied
in higher precision.

Importing ``lt8`` imports neither torch nor jax. The frontends are subpackages:

* ``lt8.torch`` (and the bitsandbytes-compatible ``lt8.nn``, ``lt8.functional``, ``lt8.autograd``)
* ``lt8.jax`` (functional ops, ``Dense8bit`` for Flax linen, ``lt8.jax.nnx``)

``python -m lt8 info`` prints what this installation can do.
"""

__version__ = "0.1.0"

from lt8._native import cuda_archs, has_cuda  # noqa: E402

__all__ = ["__version__", "has_cuda", "cuda_archs"]


def __getattr__(name: str):
    # bitsandbytes-style `lt8.nn`, `lt8.functional`, `lt8.autograd` and `lt8.matmul` need torch:
    # import them on first use so that `import lt8` stays framework-free.
    import importlib

    if name in ("nn", "functional", "autograd", "core", "torch", "jax"):
        return importlib.import_module(f"lt8.{name}")
    if name == "matmul":
        return importlib.import_module("lt8.autograd").matmul
    raise AttributeError(f"module 'lt8' has no attribute {name!r}")

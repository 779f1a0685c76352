"""``Linear8bit``: the Flax NNX twin of :class:`lt8.jax.Dense8bit`."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from lt8.core import checkpoint as ckpt
from lt8.jax import ops
from lt8.jax.linen import INT8_COLLECTION, _compute_dtype

__all__ = ["Int8Weight", "Linear8bit"]

Array = Any
_data = getattr(nnx, "data", lambda v: v)


class Int8Weight(nnx.Variable):
    """An LLM.int8() weight state: the int8 matrix ``CB`` (out, in) or its float32 row scales
    ``SCB`` (out,). Not an ``nnx.Param``: ``nnx.grad`` and optimizers filtering on ``nnx.Param``
    skip it. It maps to the linen collection "int8" (``Dense8bit``'s)."""


nnx.register_variable_name(INT8_COLLECTION, Int8Weight, overwrite=True)


#: Metadata keys that describe a variable's sharding by the kernel's (in, out) axes.
_SHARDING_KEYS = ("out_sharding", "sharding_names", "sharding")
#: Keys of a Variable's own configuration (not carried from one variable to another).
_VARIABLE_CONFIG = ("hijax", "ref", "eager_sharding")


def _int8_metadata(kernel_meta: dict, transpose: bool) -> dict:
    """The metadata of ``CB`` (``transpose``: the kernel's (in, out) names as (out, in)) or of
    ``SCB`` (the out name only) from the float kernel's metadata."""
    meta = {k: v for k, v in kernel_meta.items() if k not in _VARIABLE_CONFIG}
    for key in _SHARDING_KEYS:
        names = meta.get(key)
        if names is None:
            continue
        names = tuple(names) + (None,) * (2 - len(tuple(names)))
        meta[key] = (names[1], names[0]) if transpose else (names[1],)
    return meta


class Linear8bit(nnx.Module):
    """A linear layer computed with LLM.int8() (see :class:`lt8.jax.Dense8bit`).

    Args:
        in_features, out_features: the weight's shape is (out_features, in_features).
        use_bias: whether to add a bias ``nnx.Param`` (out_features,).
        threshold: outlier threshold (0 disables the decomposition).
        dtype: compute dtype; None uses the input's.
        param_dtype: dtype of the float parameters.
        has_fp16_weights: True keeps a float ``kernel`` ``nnx.Param`` (in, out), quantized in
            every call (training); False stores ``CB`` int8 (out, in) and ``SCB`` float32 (out,)
            as :class:`Int8Weight` variables (inference, adapters).
        kernel_init, bias_init: initializers (the float kernel is quantized once in inference).
            Sharding metadata (``nnx.with_partitioning``) carries over: ``CB`` gets the
            kernel's names as (out, in), ``SCB`` the out name.
        rngs: ``nnx.Rngs`` for the initializers.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from lt8.jax.nnx import Linear8bit
        >>> fp = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
        >>> layer = Linear8bit.from_linear(fp, threshold=6.0)
        >>> layer.CB.get_value().dtype, layer.CB.get_value().shape
        (dtype('int8'), (32, 64))
        >>> x = jax.random.normal(jax.random.key(1), (4, 64))
        >>> bool(jnp.abs(layer(x) - fp(x)).max() < 0.05)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        threshold: float = 6.0,
        dtype: Any | None = None,
        param_dtype: Any = jnp.float32,
        has_fp16_weights: bool = False,
        kernel_init: Any = nnx.initializers.lecun_normal(),
        bias_init: Any = nnx.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.threshold = use_bias, ops._threshold(threshold)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.has_fp16_weights = has_fp16_weights
        kernel = kernel_init(rngs.params(), (in_features, out_features), param_dtype)
        if has_fp16_weights:
            self.kernel = nnx.Param(kernel)
            self.CB = self.SCB = _data(None)
        else:
            meta = {}
            if isinstance(kernel, nnx.VariableMetadata):  # nnx.with_partitioning & co.
                meta, kernel = dict(kernel.metadata), kernel.raw_value
            CB, SCB = ops.quantize_weight(ckpt.kernel_to_weight(jnp.asarray(kernel)))
            self.kernel = _data(None)
            self.CB = Int8Weight(CB, **_int8_metadata(meta, transpose=True))
            self.SCB = Int8Weight(SCB, **_int8_metadata(meta, transpose=False))
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
        else:
            self.bias = _data(None)

    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError("Linear8bit needs inputs of shape (..., in_features), got a scalar")
        x = x.astype(_compute_dtype(x, self.dtype, self.param_dtype))
        bias = None if self.bias is None else self.bias.get_value()
        if self.has_fp16_weights:
            return ops.linear_fp(
                x, ckpt.kernel_to_weight(self.kernel.get_value()), bias, self.threshold
            )
        return ops.linear(x, self.CB.get_value(), self.SCB.get_value(), bias, self.threshold)

    @classmethod
    def from_linear(
        cls,
        linear: nnx.Linear,
        *,
        threshold: float = 6.0,
        has_fp16_weights: bool = False,
        dtype: Any | None = None,
    ) -> Linear8bit:
        """An LLM.int8() copy of an ``nnx.Linear``: its kernel quantized (or kept, in training
        mode) and its bias copied. Sharding metadata (``nnx.with_partitioning``) carries over:
        ``CB`` gets the kernel's names as (out, in), ``SCB`` the out name, the bias its own."""
        kernel = _with_metadata(linear.kernel)
        bias = None if linear.bias is None else _with_metadata(linear.bias)
        return cls(
            linear.in_features,
            linear.out_features,
            use_bias=bias is not None,
            threshold=threshold,
            dtype=dtype,
            param_dtype=linear.kernel.get_value().dtype,
            has_fp16_weights=has_fp16_weights,
            kernel_init=lambda *_: kernel,
            bias_init=lambda *_: bias,
            rngs=nnx.Rngs(0),  # unused: both initializers return the given arrays
        )


def _with_metadata(var: nnx.Variable) -> Any:
    """A variable's value wrapped with its user metadata (sharding names, mesh, ...), as an
    initializer returns it, so that a new variable created from it gets the same metadata."""
    meta = {k: v for k, v in var.get_metadata().items() if k not in _VARIABLE_CONFIG}
    value = var.get_value()
    return nnx.VariableMetadata(value, metadata=meta) if meta else value

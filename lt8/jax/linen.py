"""``Dense8bit``: an LLM.int8() drop-in for ``flax.linen.Dense``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lt8.core import checkpoint as ckpt
from lt8.jax import ops

__all__ = ["Dense8bit", "INT8_COLLECTION", "int8_weights_from_checkpoint"]

#: The variable collection holding the int8 weight and its scales (never "params": jax.grad
#: rejects integer leaves and optimizers must skip them).
INT8_COLLECTION = "int8"

Array = Any


def _compute_dtype(x: Array, dtype: Any, param_dtype: Any) -> Any:
    if dtype is not None:
        return ops._check_out_dtype(dtype, "dtype (the compute dtype)")
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else param_dtype


def _quantize_boxed(kernel: Any) -> tuple[Any, Any]:
    """``(CB, SCB)`` from a kernel (in, features) that may carry partitioning metadata
    (``nn.with_partitioning`` / ``nn.with_logical_partitioning``). The int8 weight gets the
    kernel's names transposed to (features, in) and ``SCB`` the features' name, in the kernel's
    own box (so logical names, mesh and rules carry over)."""
    CB, SCB = ops.quantize_weight(ckpt.kernel_to_weight(jnp.asarray(nn.meta.unbox(kernel))))
    if not isinstance(kernel, nn.Partitioned):  # LogicallyPartitioned is a Partitioned
        return CB, SCB
    names = tuple(kernel.names) + (None,) * (2 - len(kernel.names))
    in_name, out_name = names
    return kernel.replace(value=CB, names=(out_name, in_name)), kernel.replace(
        value=SCB, names=(out_name,)
    )


def int8_weights_from_checkpoint(entry: Mapping[str, Any], in_features: int | None = None):
    """``(CB, SCB, bias)`` as jax arrays from :func:`lt8.core.checkpoint.read_linear`'s result.

    A float weight is quantized; a tiled int8 weight (old bitsandbytes checkpoints) is restored
    to row-major, which needs ``in_features`` (its buffer is padded).
    """
    weight, scb, bias = entry[ckpt.KEY_WEIGHT], entry[ckpt.KEY_SCB], entry[ckpt.KEY_BIAS]
    if scb is None:
        CB, SCB = ops.quantize_weight(jnp.asarray(weight))
    else:
        CB, SCB = jnp.asarray(weight), jnp.asarray(scb, jnp.float32)
        fmt = entry[ckpt.KEY_FORMAT]
        if fmt != "row":
            if in_features is None:
                raise ValueError(
                    f"a {fmt} weight is padded: pass in_features to restore its row-major shape"
                )
            CB = ops.transform_layout(CB, "row", fmt, (SCB.shape[0], in_features))
        elif CB.ndim != 2 or CB.shape[0] != SCB.shape[0]:
            raise ValueError(
                f"weight must be int8 (out, in) with out = {SCB.shape[0]} (SCB's length), got shape {CB.shape}"
            )
    return CB, SCB, None if bias is None else jnp.asarray(bias)


class Dense8bit(nn.Module):
    """A linear layer computed with LLM.int8(): ``y = x @ W.T + bias`` where ``W`` is an int8
    weight with float32 row scales and the outlier columns of ``x`` go through a float product.

    Attributes:
        features: the number of output features.
        use_bias: whether to add a bias (kept in "params", ``param_dtype``).
        threshold: activation magnitude at or above which a column is an outlier (0 disables
            the decomposition; 6.0 is the paper's choice). Static.
        dtype: compute (and output) dtype; None uses the input's dtype (float16, bfloat16 or
            float32).
        param_dtype: dtype of the float parameters (bias; the kernel in training mode).
        has_fp16_weights: training mode. True keeps a float "kernel" (in, features) in "params",
            as ``nn.Dense`` does, and quantizes it in every call (``ops.linear_fp``). False
            (inference, adapters) stores the int8 weight ``CB`` (features, in) and its scales
            ``SCB`` (features,) float32 in the "int8" collection.
        kernel_init, bias_init: initializers as ``nn.Dense``; in inference mode the initialized
            float kernel is quantized once. Partitioning boxes (``nn.with_partitioning``,
            ``nn.with_logical_partitioning``) carry over: ``CB`` gets the kernel's names
            transposed to (features, in), ``SCB`` the features' name; under ``jax.jit`` XLA's
            partitioner then runs the int8 op on each device's shard
            (:mod:`lt8.jax.partitioning`).
        mesh, parallel, axis_name: a shortcut for tensor parallelism without partitioning
            names (inference mode): with a mesh, the int8 weight is constrained to the
            ``parallel="column"`` or ``"row"`` sharding over the mesh axis ``axis_name``
            (:func:`lt8.jax.sharding.shard_linear`).

    Invariants of the "int8" collection: ``CB`` int8 (features, in) row-major, ``SCB`` float32
    (features,), ``W ~= CB * SCB / 127`` — bitsandbytes' orientation, so checkpoints convert
    without a transpose (``to_state_dict``, ``variables_from_torch``).

    Example::

        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> from lt8.jax import Dense8bit
        >>> x = jax.random.normal(jax.random.key(0), (4, 64))
        >>> dense = nn.Dense(32)
        >>> params = dense.init(jax.random.key(1), x)["params"]
        >>> layer = Dense8bit(32, threshold=6.0)
        >>> variables = Dense8bit.variables_from_dense(params)
        >>> sorted(variables), variables["int8"]["CB"].dtype
        (['int8', 'params'], dtype('int8'))
        >>> y = jax.jit(layer.apply)(variables, x)
        >>> bool(jnp.abs(y - dense.apply({"params": params}, x)).max() < 0.05)
        True
    """

    features: int
    use_bias: bool = True
    threshold: float = 6.0
    dtype: Any | None = None
    param_dtype: Any = jnp.float32
    has_fp16_weights: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    mesh: Mesh | None = None
    parallel: str | None = None
    axis_name: str = "model"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError("Dense8bit needs inputs of shape (..., in_features), got a scalar")
        K = x.shape[-1]
        x = x.astype(_compute_dtype(x, self.dtype, self.param_dtype))
        # The kernel draws its rng before the bias, as in nn.Dense: one key, the same float kernel.
        if self.has_fp16_weights:
            if self.mesh is not None:
                raise ValueError(
                    "Dense8bit's mesh/parallel options need int8 weights (has_fp16_weights=False)"
                )
            kernel = self.param("kernel", self.kernel_init, (K, self.features), self.param_dtype)
            return ops.linear_fp(x, ckpt.kernel_to_weight(kernel), self._bias(), self.threshold)
        CB, SCB = self._int8_weight(K)
        if self.mesh is not None:
            from lt8.jax.sharding import shard_linear

            return shard_linear(
                self.mesh,
                x,
                CB,
                SCB,
                self._bias(),
                self.threshold,
                mode=self.parallel or "column",
                axis_name=self.axis_name,
            )
        return ops.linear(x, CB, SCB, self._bias(), self.threshold)

    def _bias(self) -> Array | None:
        if not self.use_bias:
            return None
        return self.param("bias", self.bias_init, (self.features,), self.param_dtype)

    def _int8_weight(self, K: int) -> tuple[Array, Array]:
        if not self.has_variable(INT8_COLLECTION, "CB"):
            if not self.is_initializing():
                raise ValueError(
                    f"Dense8bit needs its {INT8_COLLECTION!r} collection: pass "
                    f"variables={{'params': ..., {INT8_COLLECTION!r}: ...}} to apply"
                )
            kernel = self.kernel_init(self.make_rng("params"), (K, self.features), self.param_dtype)
            CB0, SCB0 = _quantize_boxed(kernel)
        else:
            CB0 = SCB0 = None
        CB = self.variable(INT8_COLLECTION, "CB", lambda: CB0).value
        SCB = self.variable(INT8_COLLECTION, "SCB", lambda: SCB0).value
        if CB.shape != (self.features, K):
            raise ValueError(
                f"x has {K} features but the int8 weight CB has shape {CB.shape}; expected "
                f"(features, in_features) = {(self.features, K)}"
            )
        return CB, SCB

    # -- conversions ---------------------------------------------------------------------------

    @staticmethod
    def variables_from_dense(dense_params: Mapping[str, Any]) -> dict:
        """Inference-mode variables from an ``nn.Dense`` parameter tree ``{'kernel', 'bias'}``
        (or ``{'params': {...}}``): the kernel (in, features) is quantized to ``CB``/``SCB``.

        Boxed parameters (``nn.with_partitioning``, ``nn.with_logical_partitioning``) stay boxed:
        ``CB`` gets the kernel's names as (features, in), ``SCB`` the features' name, the bias
        keeps its box, so ``nn.get_partition_spec`` of the result shards it as the Dense was."""
        p = dense_params.get("params", dense_params)
        if "kernel" not in p:
            raise KeyError(f"expected nn.Dense params with a 'kernel', got keys {sorted(p)}")
        CB, SCB = _quantize_boxed(p["kernel"])
        bias = p.get("bias")
        params = (
            {}
            if bias is None
            else {"bias": bias if isinstance(bias, nn.Partitioned) else jnp.asarray(bias)}
        )
        return {"params": params, INT8_COLLECTION: {"CB": CB, "SCB": SCB}}

    @staticmethod
    def variables_from_torch(
        state_dict: Mapping[str, Any], prefix: str = "", in_features: int | None = None
    ) -> dict:
        """Inference-mode variables from a torch ``nn.Linear`` or ``Linear8bitLt`` state dict.

        Values may be torch tensors or numpy arrays. A float ``weight`` (out, in) is quantized;
        an int8 one is used with its ``SCB`` as stored (a tiled ``weight_format`` is restored
        to row-major, which needs ``in_features``). ``prefix`` selects one layer of a model's
        state dict (e.g. ``"fc1."``).
        """
        CB, SCB, bias = int8_weights_from_checkpoint(
            ckpt.read_linear(state_dict, prefix), in_features
        )
        params = {} if bias is None else {"bias": bias}
        return {"params": params, INT8_COLLECTION: {"CB": CB, "SCB": SCB}}

    @staticmethod
    def to_state_dict(variables: Mapping[str, Any], prefix: str = "") -> dict:
        """Inference-mode variables as a bitsandbytes/lt8 checkpoint: numpy arrays under
        ``weight`` (int8, out×in), ``SCB``, ``bias`` (if any) and ``weight_format`` (0)."""
        q = variables[INT8_COLLECTION]
        bias = variables.get("params", {}).get("bias")
        return ckpt.write_linear(
            np.asarray(q["CB"]),
            np.asarray(q["SCB"]),
            None if bias is None else np.asarray(bias),
            prefix,
        )

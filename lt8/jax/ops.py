"""Functional LLM.int8() ops for JAX, on lt8's kernels through XLA FFI.

The functions, their argument names and results are :mod:`lt8.torch.functional`'s (lt8's
vocabulary; bitsandbytes' names exist only in the torch-side ``lt8.functional``/``lt8.autograd``).

Conventions (shared with ``lt8.torch``): an int8 weight is ``CB`` (out, in) int8, row-major,
with float32 row scales ``SCB`` (out,), so that ``W ~= CB * SCB / 127``. Activations are
``(..., K)``: every leading dimension is a batch dimension. Every op works under ``jax.jit``,
``jax.vmap``, ``jax.checkpoint`` and, where differentiable, ``jax.grad``.

Outlier decomposition: a column of ``x`` holding any ``|value| >= threshold`` (over all leading
dimensions of one call) is multiplied in higher precision; ``threshold=0`` disables it. Under
``jax.vmap`` each mapped element gets its own outlier columns, as vmap's semantics require: with
``threshold > 0`` a vmapped call therefore runs one kernel call per element (``lax.map``), while
``threshold == 0`` folds the mapped axis into the kernel's rows (one call).

NaN and +-inf reach exactly the output rows (of an activation) or columns (of a weight) they
touch; docs/NUMERICS.md states the policy and the numeric range.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lt8.core import checkpoint as ckpt
from lt8.core.layouts import LAYOUTS, padded_shape
from lt8.jax import _ffi, partitioning
from lt8.jax._batching import rowwise

__all__ = [
    "quantize_weight",
    "quantize_kernel",
    "dequantize_weight",
    "quantize_rows",
    "dequantize_rows",
    "int8_gemm",
    "dequant_epilogue",
    "linear",
    "linear_fp",
    "weight_linear",
    "transform_layout",
]

FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))

# --- validation -------------------------------------------------------------------------------


def _array(a: Any, name: str) -> jax.Array:
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    return a if isinstance(a, jax.Array) else jnp.asarray(a)


def _check_float(a: jax.Array, name: str) -> None:
    if jnp.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {a.dtype}")


def _check_dtype(a: jax.Array, name: str, dtype) -> None:
    if jnp.dtype(a.dtype) != jnp.dtype(dtype):
        raise TypeError(f"{name} must be {jnp.dtype(dtype)}, got {a.dtype}")


def _check_rows(a: jax.Array, name: str) -> None:
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension (..., features), got a scalar")


def _check_out_dtype(dtype: Any, name: str = "dtype") -> jnp.dtype:
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {dt}")
    return dt


def _threshold(threshold: Any) -> float:
    if threshold is None or isinstance(threshold, (bool, str, bytes)):
        raise TypeError(
            f"threshold must be a static Python number >= 0 (0 disables outliers), got {threshold!r}"
        )
    try:
        t = float(threshold)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"threshold must be a static Python number (it selects the kernel's code path), got {threshold!r}"
        ) from None
    if not t >= 0.0:  # also rejects NaN
        raise ValueError(f"threshold must be a number >= 0 (0 disables outliers), got {threshold}")
    return t


def _check_weight(CB: jax.Array, SCB: jax.Array, bias: jax.Array | None, K: int) -> None:
    _check_dtype(CB, "CB", jnp.int8)
    _check_dtype(SCB, "SCB", jnp.float32)
    if CB.ndim != 2:
        raise ValueError(f"CB must be 2-D (out_features, in_features), got shape {CB.shape}")
    N = CB.shape[0]
    if CB.shape[1] != K:
        raise ValueError(
            f"x has {K} features but CB expects {CB.shape[1]} (CB shape {CB.shape}, "
            "(out_features, in_features); a Flax kernel (in, out) is quantized with quantize_kernel)"
        )
    if SCB.shape != (N,):
        raise ValueError(f"SCB must have shape ({N},), got {SCB.shape}")
    if bias is not None:
        _check_float(bias, "bias")
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {bias.shape}")


# --- kernels with their vmap rules (cached per static parameter) -------------------------------
# Each goes through jax.jit: an eager call (no enclosing trace) then dispatches one cached
# executable instead of re-tracing the vmap-rule and partitioning wrappers and lowering the FFI
# call every time (~0.4-1.7 ms -> tens of us per call, benchmarks/NOTES.md); inside a trace the
# nested jit is inlined.


@functools.cache
def _quantize_rows(threshold: float):
    # With threshold 0 the mask is all zeros whatever the rows: it stays unbatched when folded.
    return jax.jit(
        rowwise(
            lambda x: _ffi.quantize_rows(x, threshold),
            n_rows=1,
            fold=threshold == 0.0,
            folded_out_batched=(True, True, False),
        )
    )


def _with_optional_bias(raw: Callable[..., Any], n_rows: int, **kw) -> Callable[..., Any]:
    """Two vmap-ruled, jitted variants of ``raw(*arrays, bias)``: with a bias operand and
    without one. An absent bias never travels as a (zero-size) operand: ``_ffi`` creates it at
    the call."""
    with_bias = jax.jit(rowwise(raw, n_rows=n_rows, **kw))
    without = jax.jit(rowwise(lambda *a: raw(*a, None), n_rows=n_rows, **kw))
    return lambda *args, bias: without(*args) if bias is None else with_bias(*args, bias)


@functools.cache
def _linear_kernel(threshold: float):
    return _with_optional_bias(
        lambda x, cb, scb, b: partitioning.int8_linear(x, cb, scb, b, threshold),
        n_rows=1,
        fold=threshold == 0.0,
    )


_weight_linear_kernel = _with_optional_bias(partitioning.int8_weight_linear, n_rows=1)
_grad_input_kernel = jax.jit(rowwise(partitioning.int8_linear_grad_input, n_rows=1))
_gemm_kernel = jax.jit(rowwise(_ffi.int8_gemm, n_rows=1))


@functools.cache
def _epilogue_kernel(dtype: jnp.dtype):
    return _with_optional_bias(
        lambda c, rs, cs, b: _ffi.dequant_epilogue(c, rs, cs, b, dtype), n_rows=2
    )


# --- quantization -----------------------------------------------------------------------------


def quantize_rows(x: jax.Array, threshold: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row-wise absmax int8 quantization with outlier columns.

    Args:
        x: (..., K) float32, float16 or bfloat16.
        threshold: columns holding any ``|x| >= threshold`` (over all rows) are outliers; 0
            disables the split.

    Returns:
        ``(q, row_scale, outlier_mask)``: ``q`` (..., K) int8 = ``rint(x * 127 / row_scale)``
        with outlier columns zeroed; ``row_scale`` (...) float32, each row's absmax over the
        non-outlier columns (0 for an all-zero row); ``outlier_mask`` (K,) bool.
    """
    x = _array(x, "x")
    _check_float(x, "x")
    _check_rows(x, "x")
    q, scale, mask = _quantize_rows(_threshold(threshold))(x)
    return q, scale, mask.astype(jnp.bool_)


def dequantize_rows(q: jax.Array, row_scale: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """Inverse of :func:`quantize_rows` without outliers: ``q * row_scale / 127`` in ``dtype``."""
    q, row_scale = _array(q, "q"), _array(row_scale, "row_scale")
    _check_dtype(q, "q", jnp.int8)
    _check_dtype(row_scale, "row_scale", jnp.float32)
    _check_rows(q, "q")
    if row_scale.shape != q.shape[:-1]:
        raise ValueError(
            f"row_scale must have shape q.shape[:-1] = {q.shape[:-1]}, got {row_scale.shape}"
        )
    return _ffi.dequantize_rows(q, row_scale, _check_out_dtype(dtype))


def quantize_weight(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Quantizes a (out, in) float weight row-wise: returns int8 ``CB`` (out, in) and float32
    ``SCB`` (out,), the absmax of each row, so that ``w ~= CB * SCB / 127``."""
    w = _array(w, "w")
    _check_float(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {w.shape}")
    CB, SCB, _ = _quantize_rows(0.0)(w)
    return CB, SCB


def quantize_kernel(kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Quantizes a Flax ``Dense`` kernel, stored (in_features, features): returns ``CB``
    (features, in_features) int8 and ``SCB`` (features,) float32, the checkpoint orientation that
    :func:`linear` and ``Dense8bit`` take. Use this, not :func:`quantize_weight`, on
    ``params["kernel"]``: a kernel passed as a weight gives scales per input feature, which is
    wrong (silently so on square layers)."""
    kernel = _array(kernel, "kernel")
    if kernel.ndim != 2:
        raise ValueError(
            f"kernel must be 2-D (in_features, features) as in flax.linen.Dense, got shape "
            f"{kernel.shape}"
        )
    return quantize_weight(ckpt.kernel_to_weight(kernel))


def dequantize_weight(CB: jax.Array, SCB: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``CB * SCB / 127`` as a (out, in) array of ``dtype``."""
    CB, SCB = _array(CB, "CB"), _array(SCB, "SCB")
    _check_dtype(CB, "CB", jnp.int8)
    _check_dtype(SCB, "SCB", jnp.float32)
    if CB.ndim != 2:
        raise ValueError(f"CB must be 2-D (out_features, in_features), got shape {CB.shape}")
    if SCB.shape != CB.shape[:1]:
        raise ValueError(f"SCB must have shape ({CB.shape[0]},) (CB's rows), got {SCB.shape}")
    return dequantize_rows(CB, SCB, dtype)


# --- int8 GEMM pieces -------------------------------------------------------------------------


def int8_gemm(A: jax.Array, B: jax.Array) -> jax.Array:
    """Exact int8 product ``A @ B.T`` with int32 results: A (..., K) int8, B (N, K) int8."""
    A, B = _array(A, "A"), _array(B, "B")
    _check_dtype(A, "A", jnp.int8)
    _check_dtype(B, "B", jnp.int8)
    _check_rows(A, "A")
    if B.ndim != 2 or B.shape[1] != A.shape[-1]:
        raise ValueError(
            f"B must be 2-D (N, K) with K = {A.shape[-1]} (A's last dim), got shape {B.shape}"
        )
    return _gemm_kernel(A, B)


def dequant_epilogue(
    C: jax.Array,
    row_scale: jax.Array,
    col_scale: jax.Array,
    bias: jax.Array | None = None,
    dtype: Any = jnp.float16,
) -> jax.Array:
    """Dequantizes an int32 product: ``C * row_scale[..., None] * col_scale / 127**2 (+ bias)``.

    C is (..., N) int32, row_scale (...) float32, col_scale (N,) float32, bias (N,) float.
    """
    C, row_scale, col_scale = (
        _array(C, "C"),
        _array(row_scale, "row_scale"),
        _array(col_scale, "col_scale"),
    )
    _check_dtype(C, "C", jnp.int32)
    _check_dtype(row_scale, "row_scale", jnp.float32)
    _check_dtype(col_scale, "col_scale", jnp.float32)
    _check_rows(C, "C")
    N = C.shape[-1]
    if row_scale.shape != C.shape[:-1]:
        raise ValueError(
            f"row_scale must have shape C.shape[:-1] = {C.shape[:-1]}, got {row_scale.shape}"
        )
    if col_scale.shape != (N,):
        raise ValueError(f"col_scale must have shape ({N},), got {col_scale.shape}")
    if bias is not None:
        bias = _array(bias, "bias")
        _check_float(bias, "bias")
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {bias.shape}")
    return _epilogue_kernel(_check_out_dtype(dtype))(C, row_scale, col_scale, bias=bias)


# --- the fused linear op (frozen int8 weight) --------------------------------------------------


def _sum_rows(g: jax.Array, dtype: Any) -> jax.Array:
    return jnp.sum(g, axis=tuple(range(g.ndim - 1)), dtype=jnp.float32).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear(x, CB, SCB, bias, threshold):
    return _linear_kernel(threshold)(x, CB, SCB, bias=bias)


def _linear_fwd(x, CB, SCB, bias, threshold):
    return _linear(x, CB, SCB, bias, threshold), (CB, SCB, bias, partitioning.sharding_of(x))


def _frozen_weight_bwd(res, g):
    # Straight-through: dx = dy @ W with W = CB * SCB / 127; CB and SCB are constants.
    CB, SCB, bias, x_sharding = res
    grad_bias = None if bias is None else _sum_rows(g, bias.dtype)
    grad_x = partitioning.with_sharding(_grad_input_kernel(g, CB, SCB), x_sharding)
    return grad_x, None, None, grad_bias


_linear.defvjp(_linear_fwd, lambda threshold, res, g: _frozen_weight_bwd(res, g))

# The fused op's custom_vjp wrapper through jax.jit too (see the kernels above): an eager call
# then dispatches one executable.
_linear_jit = jax.jit(_linear, static_argnums=(4,))


def linear(
    x: jax.Array,
    CB: jax.Array,
    SCB: jax.Array,
    bias: jax.Array | None = None,
    threshold: float = 6.0,
) -> jax.Array:
    """The fused LLM.int8() linear op: ``x @ (CB * SCB / 127).T + bias`` with outliers.

    Columns of ``x`` holding any ``|value| >= threshold`` multiply the dequantized weight in
    higher precision; the rest are quantized per row to int8 and multiply ``CB`` exactly.

    Args:
        x: (..., K) float32, float16 or bfloat16; any leading dimensions.
        CB: (N, K) int8 weight; SCB: (N,) float32 row scales.
        bias: optional (N,) float of any float dtype (added in float32).
        threshold: static outlier threshold; 0 disables the decomposition.

    Returns:
        (..., N) in x's dtype. Differentiable in ``x`` (``grad_x = grad @ W``, the straight-through
        estimator) and ``bias``; ``CB`` and ``SCB`` are treated as constants (zero cotangents).
    """
    x, CB, SCB = _array(x, "x"), _array(CB, "CB"), _array(SCB, "SCB")
    bias = None if bias is None else _array(bias, "bias")
    _check_float(x, "x")
    _check_rows(x, "x")
    _check_weight(CB, SCB, bias, x.shape[-1])
    return _linear_jit(x, CB, SCB, bias, _threshold(threshold))


@jax.custom_vjp
def _weight_linear(x, CB, SCB, bias):
    return _weight_linear_kernel(x, CB, SCB, bias=bias)


_weight_linear.defvjp(
    lambda x, CB, SCB, bias: (
        _weight_linear(x, CB, SCB, bias),
        (CB, SCB, bias, partitioning.sharding_of(x)),
    ),
    _frozen_weight_bwd,
)


_weight_linear_jit = jax.jit(_weight_linear)  # see _linear_jit


def weight_linear(
    x: jax.Array, CB: jax.Array, SCB: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
    """Weight-only int8 linear (bitsandbytes' ``force_no_igemmlt`` path): x stays in its float
    dtype and multiplies the dequantized weight, accumulating in float32:
    ``(x @ CB.T) * SCB / 127 + bias``. Shapes, dtypes and gradients as :func:`linear`."""
    x, CB, SCB = _array(x, "x"), _array(CB, "CB"), _array(SCB, "SCB")
    bias = None if bias is None else _array(bias, "bias")
    _check_float(x, "x")
    _check_rows(x, "x")
    _check_weight(CB, SCB, bias, x.shape[-1])
    return _weight_linear_jit(x, CB, SCB, bias)


# --- training variant: float master weight, quantized in every forward -------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _linear_fp(x, w, bias, threshold):
    CB, SCB, _ = _quantize_rows(0.0)(w)
    return _linear_kernel(threshold)(x, CB, SCB, bias=bias)


def _linear_fp_fwd(x, w, bias, threshold):
    return _linear_fp(x, w, bias, threshold), (x, w, bias)


def _linear_fp_bwd(threshold, res, g):
    # The ordinary gradients of x @ w.T + bias (straight through the quantization).
    # Full float32 products (no TF32 on GPUs), as torch's default matmul precision.
    x, w, bias = res
    mm = functools.partial(
        jnp.einsum, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST
    )
    grad_x = mm("...n,nk->...k", g, w).astype(x.dtype)
    # Contract the leading dimensions directly: a reshape to (-1, N) is ambiguous when N or K is 0.
    lead = "".join(chr(ord("A") + i) for i in range(g.ndim - 1))
    grad_w = mm(f"{lead}n,{lead}k->nk", g, x).astype(w.dtype)
    grad_bias = None if bias is None else _sum_rows(g, bias.dtype)
    return grad_x, grad_w, grad_bias


_linear_fp.defvjp(_linear_fp_fwd, _linear_fp_bwd)
_linear_fp_jit = jax.jit(_linear_fp, static_argnums=(3,))  # see _linear_jit


def linear_fp(
    x: jax.Array, w: jax.Array, bias: jax.Array | None = None, threshold: float = 6.0
) -> jax.Array:
    """LLM.int8() linear with a floating-point master weight (training, ``has_fp16_weights``).

    The forward quantizes ``w`` (out, in) row-wise and runs :func:`linear`; the backward gives
    the ordinary gradients of ``x @ w.T + bias``: ``grad_x = g @ w``, ``grad_w = g^T x`` (over the
    flattened leading dimensions), ``grad_bias = sum(g)``, each in its primal's dtype.
    """
    x, w = _array(x, "x"), _array(w, "w")
    bias = None if bias is None else _array(bias, "bias")
    _check_float(x, "x")
    _check_rows(x, "x")
    _check_float(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {w.shape}")
    if w.shape[1] != x.shape[-1]:
        raise ValueError(
            f"x has {x.shape[-1]} features but w expects {w.shape[1]} (w shape {w.shape})"
        )
    if bias is not None:
        _check_float(bias, "bias")
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), got {bias.shape}")
    return _linear_fp_jit(x, w, bias, _threshold(threshold))


# --- layouts ----------------------------------------------------------------------------------


def _check_order(order: str, name: str) -> None:
    if order not in LAYOUTS:
        raise ValueError(f"{name} must be one of {sorted(LAYOUTS)}, got {order!r}")


def transform_layout(
    a: jax.Array, to_order: str, from_order: str = "row", shape: tuple[int, int] | None = None
) -> jax.Array:
    """Converts an int8 matrix between row-major and cuBLASLt's tiled orders.

    Args:
        a: int8. From "row": the 2-D (rows, cols) matrix. From a tiled order: its buffer (any
            shape holding ``prod(padded_shape(from_order, *shape))`` elements).
        to_order, from_order: "row", "col32", "col_turing" or "col_ampere".
        shape: the logical (rows, cols); required when ``from_order`` is tiled.

    Returns:
        "row": the (rows, cols) matrix; a tiled order: its (padded_rows, padded_cols) buffer,
        padding bytes 0, whose C-order bytes are cuBLASLt's layout.
    """
    a = _array(a, "a")
    _check_dtype(a, "a", jnp.int8)
    _check_order(to_order, "to_order")
    _check_order(from_order, "from_order")
    if from_order == "row":
        if a.ndim != 2:
            raise ValueError(
                f"a must be 2-D (rows, cols) when from_order='row', got shape {a.shape}"
            )
        if shape is not None and tuple(shape) != a.shape:
            raise ValueError(f"shape {tuple(shape)} does not match a's shape {a.shape}")
        rows, cols = a.shape
    else:
        if shape is None:
            raise ValueError(
                f"converting from {from_order!r} needs shape=(rows, cols), the logical shape"
            )
        rows, cols = (int(s) for s in shape)
        if rows < 0 or cols < 0:
            raise ValueError(f"shape must be (rows, cols) with both >= 0, got {tuple(shape)}")
        need = int(np.prod(padded_shape(from_order, rows, cols)))
        if a.size != need:
            raise ValueError(
                f"a {from_order} buffer of a ({rows}, {cols}) matrix has {need} elements, got {a.size}"
            )
    if from_order != "row" and to_order != "row":  # tiled -> tiled goes through row-major
        a, from_order = transform_layout(a, "row", from_order, (rows, cols)), "row"
    return _ffi.transform_layout(
        a, rows, cols, from_order, to_order, padded_shape(to_order, rows, cols)
    )

"""XLA FFI registration of lt8's kernels and every ``jax.ffi.ffi_call`` site of ``lt8.jax``.

Importing this module registers each handler capsule of ``lt8._C.registrations()`` once, under
the target name ``lt8_<op>`` for its platform ("cpu" always, "CUDA" when the extension was built
with CUDA kernels). The functions below are raw calls: they validate nothing (``ops.py`` does)
and take arrays already in the layout the handlers expect (``xla_ffi/handlers.h``):

* activations are ``(..., K)``: every leading dimension is a batch row of the kernel;
* weights are 2-D ``(N, K)`` int8 with float32 ``(N,)`` scales;
* an absent bias (``None``) becomes the zero-size ``(0,)`` operand the handlers expect, created
  here at the call site. (Passing a zero-size array *into* a custom_vjp/custom_vmap and on to the
  call made XLA's SPMD partitioner segfault, jax 0.11.2 CPU, inside shard_map with a psum.)

Each call names the ``vmap_method`` that is correct for it on its own: "broadcast_all" where
every operand shares the leading batch dimensions, "sequential" where a 2-D weight or a per-call
outlier mask must not gain a batch dimension. ``ops.py`` puts a ``custom_vmap`` rule in front of
the sequential ones, which folds an activation-only batch into the kernel's rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lt8._native import DEVICE_CUDA, DTYPE_BF16, DTYPE_F16, DTYPE_F32, LAYOUT_CODES, C, has_ffi

#: One ffi_call wrapper per op of cuda/ops.def (lt8._C.ops()), named as the op; checked at the end.
__all__ = ["PLATFORMS", "linear_workspace_bytes", *C.ops()]


def _register() -> tuple[str, ...]:
    if not has_ffi():
        raise ImportError(
            "lt8 was built without its XLA FFI handlers (LT8_FFI=OFF or jax missing at build time); "
            "lt8.jax needs them: install jax, then rebuild with `pip install --no-build-isolation -e .`"
        )
    platforms = []
    for platform, targets in C.registrations().items():
        for name, capsule in targets.items():
            jax.ffi.register_ffi_target(f"lt8_{name}", capsule, platform=platform)
        platforms.append(platform)
    return tuple(platforms)


#: Platforms whose handlers this build registered ("cpu", and "CUDA" with CUDA kernels).
PLATFORMS: tuple[str, ...] = _register()


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _bias_operand(bias: jax.Array | None) -> jax.Array:
    return jnp.zeros((0,), jnp.float32) if bias is None else bias


def quantize_rows(x: jax.Array, threshold: float):
    """x (..., K) float -> q (..., K) int8, row_scale (...) float32, outlier mask (K,) uint8.

    Sequential under vmap: the mask is one per call, so a batched call needs one per element.
    """
    call = jax.ffi.ffi_call(
        "lt8_quantize_rows",
        (_sds(x.shape, np.int8), _sds(x.shape[:-1], np.float32), _sds(x.shape[-1:], np.uint8)),
        vmap_method="sequential",
    )
    return call(x, threshold=np.float32(threshold))


def dequantize_rows(q: jax.Array, row_scale: jax.Array, dtype) -> jax.Array:
    """q (..., K) int8, row_scale (...) float32 -> (..., K) of ``dtype`` = q * row_scale / 127."""
    call = jax.ffi.ffi_call(
        "lt8_dequantize_rows", _sds(q.shape, dtype), vmap_method="broadcast_all"
    )
    return call(q, row_scale)


def int8_gemm(a: jax.Array, b: jax.Array) -> jax.Array:
    """A (..., K) int8 @ B (N, K) int8 ^T -> (..., N) int32, exact."""
    call = jax.ffi.ffi_call(
        "lt8_int8_gemm", _sds((*a.shape[:-1], b.shape[0]), np.int32), vmap_method="sequential"
    )
    return call(a, b)


def dequant_epilogue(
    c: jax.Array, row_scale: jax.Array, col_scale: jax.Array, bias: jax.Array | None, dtype
) -> jax.Array:
    """C (..., N) int32 * row_scale (...) * col_scale (N,) / 127^2 (+ bias (N,))."""
    call = jax.ffi.ffi_call("lt8_dequant_epilogue", _sds(c.shape, dtype), vmap_method="sequential")
    return call(c, row_scale, col_scale, _bias_operand(bias))


def transform_layout(
    a: jax.Array, rows: int, cols: int, from_order: str, to_order: str, out_shape: tuple[int, ...]
) -> jax.Array:
    """An int8 matrix of logical shape (rows, cols) from one memory order to another.

    ``a`` holds the ``from_order`` buffer (any shape with the right element count); the result
    has ``out_shape``, whose element count must be the ``to_order`` buffer's.
    """
    call = jax.ffi.ffi_call(
        "lt8_transform_layout", _sds(out_shape, np.int8), vmap_method="sequential"
    )
    return call(
        a,
        rows=np.int64(rows),
        cols=np.int64(cols),
        from_layout=np.int32(LAYOUT_CODES[from_order]),
        to_layout=np.int32(LAYOUT_CODES[to_order]),
    )


# x's dtype -> the kernels' dtype code (the fused op's workspace depends on it).
_DTYPE_CODES = {
    np.dtype(np.float32): DTYPE_F32,
    np.dtype(jnp.float16): DTYPE_F16,
    np.dtype(jnp.bfloat16): DTYPE_BF16,
}


def _dtype_code(dtype) -> int:
    return _DTYPE_CODES[np.dtype(dtype)]


def linear_workspace_bytes(M: int, N: int, K: int, dtype, threshold: float) -> int:
    """Bytes of scratch the fused linear kernel needs for (M, N, K), x's dtype and the threshold.
    Sized at trace time, before the platform is known: the CUDA size, which serves the CPU too."""
    return int(C.linear_workspace_size(M, N, K, _dtype_code(dtype), threshold, DEVICE_CUDA))


def int8_linear(
    x: jax.Array, cb: jax.Array, scb: jax.Array, bias: jax.Array | None, threshold: float
) -> jax.Array:
    """The fused LLM.int8() linear op: x (..., K), CB (N, K), SCB (N,) -> (..., N) in x's dtype.

    The kernel's scratch is a second, discarded output sized here at trace time, so the call
    allocates nothing itself and stays graph-friendly.
    """
    N, K = cb.shape
    M = int(np.prod(x.shape[:-1], dtype=np.int64))
    call = jax.ffi.ffi_call(
        "lt8_int8_linear",
        (
            _sds((*x.shape[:-1], N), x.dtype),
            _sds((linear_workspace_bytes(M, N, K, x.dtype, threshold),), np.uint8),
        ),
        vmap_method="sequential",
    )
    out, _workspace = call(x, cb, scb, _bias_operand(bias), threshold=np.float32(threshold))
    return out


def int8_weight_linear(
    x: jax.Array, cb: jax.Array, scb: jax.Array, bias: jax.Array | None
) -> jax.Array:
    """Weight-only int8 linear: (x @ CB^T) * SCB / 127 + bias, in x's dtype."""
    call = jax.ffi.ffi_call(
        "lt8_int8_weight_linear",
        _sds((*x.shape[:-1], cb.shape[0]), x.dtype),
        vmap_method="sequential",
    )
    return call(x, cb, scb, _bias_operand(bias))


def int8_linear_grad_input(g: jax.Array, cb: jax.Array, scb: jax.Array) -> jax.Array:
    """grad_x (..., K) = grad_out (..., N) @ (CB * SCB / 127), in grad_out's dtype."""
    call = jax.ffi.ffi_call(
        "lt8_int8_linear_grad_input",
        _sds((*g.shape[:-1], cb.shape[1]), g.dtype),
        vmap_method="sequential",
    )
    return call(g, cb, scb)


def add_outlier_terms(
    x: jax.Array, outlier_mask: jax.Array, cb: jax.Array, scb: jax.Array, base: jax.Array
) -> jax.Array:
    """base (..., N) float32 plus the outlier columns' terms of x (..., K) @ W^T, W = CB * SCB /
    127, in the fused op's order: the float32 result (..., N) before the bias. The kernel's
    scratch (the tensor-core path's gather buffers) is a second, discarded output."""
    N, K = cb.shape
    M = int(np.prod(x.shape[:-1], dtype=np.int64))
    ws = int(C.outlier_terms_workspace_size(M, N, K, _dtype_code(x.dtype), DEVICE_CUDA))
    call = jax.ffi.ffi_call(
        "lt8_add_outlier_terms",
        (_sds(base.shape, np.float32), _sds((ws,), np.uint8)),
        vmap_method="sequential",
    )
    out, _workspace = call(x, outlier_mask, cb, scb, base)
    return out


_missing = [name for name in C.ops() if name not in globals()]
if _missing:
    raise ImportError(f"lt8.jax._ffi has no ffi_call wrapper for ops {_missing} of cuda/ops.def")

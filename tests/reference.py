"""Independent float64 numpy reference of LLM.int8() for the tests of both frameworks.

Written from the paper's definition, not from lt8's kernels: outlier columns are those holding
any |x| >= threshold; the other columns are quantized per row by absmax to int8 (round half to
even); the product is dequantized by row_scale * col_scale / 127^2; outlier columns multiply
the dequantized weight W = CB * SCB / 127 in float64.

Non-finite values follow docs/NUMERICS.md: int8 cannot hold NaN or inf, so a row whose absmax
(over its non-outlier columns) is NaN or inf quantizes to zeros with that non-finite scale, and
its dequantized products are NaN (0 * inf, 0 * NaN). NaN is never an outlier; +-inf is one
whenever threshold > 0. Products that may meet non-finite values are evaluated element by
element (IEEE: inf * 0 = NaN), never by a BLAS that might skip zeros.
"""

from __future__ import annotations

import math

import numpy as np


def _rows(a: np.ndarray) -> np.ndarray:
    """a (..., K) as (M, K): explicit sizes, since reshape(-1, K) is ambiguous when K == 0."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (M, K) @ b (K, N) in float64 with IEEE semantics for inf and NaN in every term."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.isfinite(a).all() and np.isfinite(b).all():
        return a @ b
    with np.errstate(invalid="ignore", over="ignore"):
        return np.einsum("mk,kn->mn", a, b, optimize=False)


def quantize_rows_ref(x: np.ndarray, threshold: float = 0.0):
    """Returns (q int8, row_scale float64, outlier_mask bool) for x of shape (..., K)."""
    x = np.asarray(x, dtype=np.float64)
    K = x.shape[-1]
    flat = _rows(x)
    if threshold > 0:
        mask = (np.abs(flat) >= threshold).any(axis=0)
    else:
        mask = np.zeros(K, dtype=bool)
    regular = np.where(mask[None, :], 0.0, flat)
    # NaN wins the absmax (np.max propagates it): that row's scale is NaN.
    absmax = np.abs(regular).max(axis=1, initial=0.0)
    quantizable = (absmax > 0) & np.isfinite(absmax)  # zero and non-finite rows give q = 0
    # x * 127 / absmax with one rounding (x * 127 is exact): exact ties stay ties for rint.
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.divide(
            regular * 127.0, absmax[:, None], out=np.zeros_like(regular), where=quantizable[:, None]
        )
    q = np.clip(np.rint(scaled), -127, 127).astype(np.int8)
    return q.reshape(x.shape), absmax.reshape(x.shape[:-1]), mask


def dequantize_weight_ref(CB: np.ndarray, SCB: np.ndarray) -> np.ndarray:
    """W (N, K) = CB * SCB / 127 in float64."""
    with np.errstate(invalid="ignore"):
        return np.asarray(CB, np.float64) * np.asarray(SCB, np.float64)[:, None] / 127.0


def linear_ref(x, CB, SCB, bias=None, threshold: float = 0.0) -> np.ndarray:
    """The LLM.int8() linear op in float64: x (..., K), CB (N, K) int8, SCB (N,) -> (..., N)."""
    x = np.asarray(x, dtype=np.float64)
    flat = _rows(x)
    q, row_scale, mask = quantize_rows_ref(flat, threshold)
    CB64 = np.asarray(CB, np.float64)
    SCB64 = np.asarray(SCB, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out = (q.astype(np.float64) @ CB64.T) * row_scale[:, None] * SCB64[None, :] / 127.0**2
        if mask.any():
            out = out + _matmul(flat[:, mask], dequantize_weight_ref(CB, SCB)[:, mask].T)
        if bias is not None:
            out = out + np.asarray(bias, np.float64)[None, :]
    return out.reshape(*x.shape[:-1], CB64.shape[0])


def weight_linear_ref(x, CB, SCB, bias=None) -> np.ndarray:
    """Weight-only int8 linear in float64: x @ (CB * SCB / 127).T + bias."""
    x = np.asarray(x, dtype=np.float64)
    out = _matmul(_rows(x), dequantize_weight_ref(CB, SCB).T)
    if bias is not None:
        with np.errstate(invalid="ignore"):
            out = out + np.asarray(bias, np.float64)
    return out.reshape(*x.shape[:-1], np.shape(CB)[0])


def grad_input_ref(grad_out, CB, SCB) -> np.ndarray:
    """dL/dx = dL/dy @ W with W = CB * SCB / 127, in float64."""
    g = np.asarray(grad_out, np.float64)
    return _matmul(_rows(g), dequantize_weight_ref(CB, SCB)).reshape(*g.shape[:-1], np.shape(CB)[1])


def dequant_epilogue_ref(C, row_scale, col_scale, bias=None) -> np.ndarray:
    """C (..., N) int32 * row_scale (...) * col_scale (N,) / 127^2 (+ bias), in float64."""
    out = (
        np.asarray(C, np.float64)
        * np.asarray(row_scale, np.float64)[..., None]
        * np.asarray(col_scale, np.float64)
        / 127.0**2
    )
    return out if bias is None else out + np.asarray(bias, np.float64)


def linear_error_bound(
    x, CB, SCB, ref, out_eps: float, out_tiny: float = 0.0, threshold: float = 0.0, q=None
) -> np.ndarray:
    """Elementwise bound on |lt8 - linear_ref| for finite inputs: float32 accumulation of the
    products (over K terms), one rounding to the output dtype (relative ``out_eps``, absolute
    ``out_tiny`` for subnormal outputs) and, when ``q`` (the implementation's int8 rows of x) is
    given, the int8 steps where an element within a float32 ulp of a rounding tie quantized one
    step away from this reference."""
    x = np.asarray(x, np.float64)
    K = x.shape[-1]
    flat = _rows(x)
    W = np.abs(dequantize_weight_ref(CB, SCB))
    S = np.abs(flat) @ W.T
    bound = (
        (K + 4) * 2.0**-23 * S
        + 2 * out_eps * np.abs(np.asarray(ref, np.float64).reshape(S.shape))
        + out_tiny
    )
    if q is not None:
        q_ref, scale, _ = quantize_rows_ref(flat, threshold)
        steps = np.abs(np.asarray(q, np.float64).reshape(q_ref.shape) - q_ref) * (
            scale[:, None] / 127
        )
        bound = bound + steps @ W.T
    return bound.reshape(np.shape(ref))

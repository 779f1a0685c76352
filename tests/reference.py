"""Independent float64 numpy reference of LLM.int8() for the tests of both frameworks.

Outlier columns are those holding any |x| >= threshold; the other columns are quantized per row
by absmax to int8; the product is dequantized by row_scale * col_scale / 127^2; outlier columns
multiply the dequantized weight W = CB * SCB / 127 in float64.

The int8 rounding is the one documented in cuda/numerics.h, reproduced step by step (not
imported from lt8): q = rint(float32(float32(x * 127) / absmax)), round half to even, NaN -> 0,
saturated to +-127, rows with absmax 0, inf or NaN give zeros. lt8's int8 rows must equal it
exactly. ``dequant_epilogue_f32`` and ``linear_f32`` likewise spell out the kernels' float32
evaluation order (cuda/numerics.h ``dequant`` and ``weight_value``), for the few tests that check
the epilogues bit for bit; every other output check is a bound derived from this reference.

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


def _f32(a) -> np.ndarray:
    """``a`` rounded to float32 (round to nearest even) and held as float64: one kernel step.

    Each step of the kernel is a single float32 operation on float32 operands; its exact result
    is representable in float64 for products (24 + 24 bits) and correctly rounded by float64 for
    quotients, and rounding that float64 to float32 equals the single float32 rounding (53 >= 2 *
    24 + 2, so the double rounding is innocuous for +, -, *, /)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(a, np.float64).astype(np.float32).astype(np.float64)


FLT_MAX = float(np.finfo(np.float32).max)
# Row absmax above which the kernel scales x and absmax by 2^-8 before x * 127 (which would
# overflow float32); both scalings are exact there, so the quotient is unchanged.
_BIG_ABSMAX = 2.0**120


def outlier_mask_ref(x: np.ndarray, threshold: float) -> np.ndarray:
    """(K,) bool: columns holding any |x| >= threshold, compared in float32 as the kernel does
    (the threshold reaches it as a float32). NaN is never an outlier; threshold 0 disables."""
    flat = _rows(_f32(x))
    t = float(_f32(threshold))
    if not threshold > 0:
        return np.zeros(flat.shape[1], dtype=bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(flat) >= t).any(axis=0)


def quantize_values_ref(x: np.ndarray, absmax: np.ndarray) -> np.ndarray:
    """int8 q = rint((x * 127) / absmax) with the kernel's float32 steps (cuda/numerics.h): x * 127
    rounded to float32, divided by the float32 absmax with one float32 rounding, NaN -> 0,
    saturated to [-127, 127], rounded half to even. ``absmax`` broadcasts against ``x`` (one per
    row); a row whose absmax is 0, inf or NaN gives zeros."""
    x = _f32(x)
    absmax = np.broadcast_to(_f32(absmax), x.shape)
    ok = (absmax > 0) & (absmax <= FLT_MAX)
    big = absmax > _BIG_ABSMAX
    x = np.where(big, _f32(x * 2.0**-8), x)
    a = np.where(big, absmax * 2.0**-8, absmax)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        v = _f32(np.divide(_f32(x * 127.0), a, out=np.zeros_like(x), where=ok))
    v = np.where(np.isnan(v), 0.0, v)
    return np.rint(np.clip(v, -127.0, 127.0)).astype(np.int8)


def quantize_rows_ref(x: np.ndarray, threshold: float = 0.0):
    """Returns (q int8, row_scale float64, outlier_mask bool) for x of shape (..., K).

    x is read as float32 (the kernels load fp16/bf16/float32 into float32). Outlier columns are
    zero in q and left out of the absmax; the row scale is the absmax of the other columns (NaN
    wins); q follows ``quantize_values_ref``. lt8's int8 rows must equal this exactly."""
    x = _f32(x)
    flat = _rows(x)
    mask = outlier_mask_ref(flat, threshold)
    regular = np.where(mask[None, :], 0.0, flat)
    # NaN wins the absmax (np.max propagates it): that row's scale is NaN.
    absmax = np.abs(regular).max(axis=1, initial=0.0)
    q = quantize_values_ref(regular, absmax[:, None])
    return q.reshape(x.shape), absmax.reshape(x.shape[:-1]), mask


def quantize_rows_double_rounding(x: np.ndarray) -> np.ndarray:
    """The formula cuda/numerics.h warns against, q = rint(x * float32(127 / absmax)) (two
    roundings), no outliers. Only for asserting that a test's inputs tell it apart from the
    kernel's formula; never a reference."""
    flat = _rows(_f32(x))
    absmax = np.abs(flat).max(axis=1, initial=0.0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        v = _f32(flat * _f32(np.divide(127.0, absmax, out=np.zeros_like(absmax), where=absmax > 0)))
    return np.rint(np.clip(v, -127, 127)).astype(np.int8).reshape(np.shape(x))


def grid_values(dtype: str) -> np.ndarray:
    """Every finite non-negative value of ``dtype`` ("float16" or "bfloat16"), ascending, as
    float64 (from the bit patterns: no framework needed)."""
    bits = np.arange(0x7C00 if dtype == "float16" else 0x7F80, dtype=np.uint32)
    if dtype == "float16":
        return bits.astype(np.uint16).view(np.float16).astype(np.float64)
    return (bits << 16).view(np.float32).astype(np.float64)


def tie_rows(dtype: str, K: int = 64) -> np.ndarray:
    """Deterministic activation rows (M, K) on ``dtype``'s grid ("float16", "bfloat16" or
    "float32") that pin the quantizer's rounding: every row holds its absmax (+-, so q = +-127)
    and values whose x * 127 / absmax is an exact .5 tie (round half to even decides them),
    first those where the per-element factor 127 / absmax would round twice and flip the result,
    then values one grid step either side of a tie; plus an all-zero row and a row of tiny
    values (fp16 subnormals; the smallest float32-normal values of bfloat16 and float32)."""
    grid = (
        grid_values(dtype)
        if dtype != "float32"
        else np.concatenate([np.arange(0, 4096) / 256.0, np.arange(1, 400) * 1.5])
    )
    rows = []
    # Row maxima chosen (by search) so that each dtype gets ties the two-rounding formula flips.
    for absmax in (
        222.25,
        1.736328125,
        14.8828125,
        25.796875,
        127.0,
        31.75,
        381.0,
        3.0,
        7.0,
        1000.0,
    ):
        if absmax not in grid:
            continue
        g = grid[grid <= absmax]
        # x * 127 / absmax is a tie exactly when 254 x / absmax is an odd integer (fmod is exact).
        ties = g[(np.fmod(g * 254.0, absmax) == 0) & (np.fmod(g * 127.0, absmax) != 0)]
        if ties.size == 0:
            continue
        naive = quantize_rows_double_rounding(np.concatenate([[absmax], ties])[None, :])[0, 1:]
        exact = quantize_values_ref(ties, absmax)
        flips = ties[naive != exact]
        idx = np.searchsorted(g, ties)
        near = np.concatenate([g[np.maximum(idx - 1, 0)], g[np.minimum(idx + 1, g.size - 1)]])
        picked = np.concatenate([flips, ties[naive == exact], near])[: K - 2]
        row = np.zeros(K)
        row[: picked.size] = picked
        row[K - 2], row[K - 1] = absmax, -absmax
        signs = np.where(np.arange(K - 2) % 2 == 0, 1.0, -1.0)
        row[: K - 2] *= signs
        rows.append(row)
    rows.append(np.zeros(K))
    # Tiny rows stay float32-normal: XLA's CPU runtime flushes float32 subnormals to zero
    # (torch's does not), so float32/bfloat16 subnormals would not compare across frameworks.
    tiny = grid[grid >= (0 if dtype == "float16" else 2.0**-126)][1 : K + 1]
    rows.append(np.resize(tiny, K) * np.where(np.arange(K) % 3 == 0, -1.0, 1.0))
    return np.stack(rows)


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


def outlier_magnitude_ref(x, CB, SCB, threshold: float) -> np.ndarray:
    """(M, N) sum over the outlier columns k of |x[m, k] * W[n, k]|: what float32 rounding of the
    outlier terms is relative to, when the GPU sums them in its own order (docs/NUMERICS.md)."""
    flat = _rows(np.asarray(x, dtype=np.float64))
    mask = outlier_mask_ref(flat, threshold)
    return np.abs(flat[:, mask]) @ np.abs(dequantize_weight_ref(CB, SCB)[:, mask]).T


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


# float32(1 / 127) and float32(1 / 127^2): the kernels' constants (cuda/numerics.h).
INV127_F32 = float(np.float32(1.0) / np.float32(127.0))
INV127SQ_F32 = float(np.float32(1.0) / np.float32(127.0 * 127.0))


def dequant_epilogue_f32(C, row_scale, col_scale, bias=None) -> np.ndarray:
    """The kernels' float32 epilogue, step by step: float(C) * ((row_scale * col_scale) *
    float32(1/127^2)), then + bias, each step rounded to float32. Returns float64 holding the
    float32 values (round them to the output dtype with round-to-nearest-even)."""
    s = _f32(_f32(np.asarray(row_scale, np.float64)[..., None] * _f32(col_scale)) * INV127SQ_F32)
    v = _f32(_f32(np.asarray(C, np.float64)) * s)
    return v if bias is None else _f32(v + _f32(bias))


def dequantize_rows_f32(q, row_scale) -> np.ndarray:
    """The kernels' float32 dequantization q * (row_scale * float32(1/127)), step by step (also
    the dequantized weight CB * (SCB / 127) of ``weight_value``)."""
    s = _f32(_f32(row_scale)[..., None] * INV127_F32)
    return _f32(np.asarray(q, np.float64) * s)


def linear_f32(x, CB, SCB, bias=None, threshold: float = 0.0) -> np.ndarray:
    """The fused int8 op evaluated in the kernels' float32 order: the exact int32 product of the
    reference int8 rows through ``dequant_epilogue_f32``'s dequantization, then each outlier
    column in ascending order, v += x[k] * W[n, k] (W from ``dequantize_rows_f32``), then + bias;
    every step rounded to float32. For finite inputs."""
    x = _f32(x)
    flat = _rows(x)
    q, row_scale, mask = quantize_rows_ref(flat, threshold)
    acc = q.astype(np.int64) @ np.asarray(CB, np.int64).T  # exact, as the int32 accumulator
    v = dequant_epilogue_f32(acc, row_scale, SCB)
    W = dequantize_rows_f32(CB, SCB)
    for k in np.flatnonzero(mask):
        v = _f32(v + _f32(flat[:, k : k + 1] * W[None, :, k]))
    if bias is not None:
        v = _f32(v + _f32(bias))
    return v.reshape(*x.shape[:-1], np.shape(CB)[0])


def linear_error_bound(
    x, CB, SCB, ref, out_eps: float, out_tiny: float = 0.0, threshold: float = 0.0, q=None
) -> np.ndarray:
    """Elementwise bound on |lt8 - reference| for finite inputs, from the reference alone.

    Without ``q`` (float paths: weight-only linear, input gradient): float32 accumulation of K
    products in any order, ``(K + 4) * 2^-23 * (|x| @ |W|.T)``. With ``q`` (the fused int8 op,
    whose int8 rows ``q`` the caller read from lt8): ``q`` must EQUAL ``quantize_rows_ref`` (an
    AssertionError otherwise; the bound never forgives a quantization difference) and then only
    float32 roundings remain: the exact int32 dot product dequantized by three float32 products,
    plus the outlier columns accumulated in float32, ``(n_outlier + 8) * 2^-24`` times the sum
    of the magnitudes. Both add one rounding to the output dtype (``2 * out_eps * |ref|``) and
    ``out_tiny`` for outputs in the dtype's subnormal range."""
    x = np.asarray(x, np.float64)
    K = x.shape[-1]
    flat = _rows(x)
    W = np.abs(dequantize_weight_ref(CB, SCB))
    if q is None:
        float_err = (K + 4) * 2.0**-23 * (np.abs(flat) @ W.T)
    else:
        q_ref, scale, mask = quantize_rows_ref(flat, threshold)
        q = np.asarray(q).reshape(q_ref.shape)
        bad = np.argwhere(q != q_ref)
        assert bad.size == 0, (
            f"int8 rows differ from the reference quantizer at {len(bad)} elements, first "
            f"{bad[:5].tolist()}: lt8 {q[tuple(bad[:5].T)].tolist()}, "
            f"reference {q_ref[tuple(bad[:5].T)].tolist()}"
        )
        deq = (np.abs(q_ref.astype(np.float64)) * (scale[:, None] / 127.0)) @ W.T
        outl = np.abs(flat[:, mask]) @ W[:, mask].T
        float_err = (int(mask.sum()) + 8) * 2.0**-24 * (deq + outl)
    ref64 = np.abs(np.asarray(ref, np.float64).reshape(float_err.shape))
    bound = float_err + 2 * out_eps * (ref64 + float_err) + out_tiny
    return bound.reshape(np.shape(ref))

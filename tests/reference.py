"""Independent float64 numpy reference of LLM.int8() for the tests of both frameworks.

Written from the paper's definition, not from lt8's kernels: outlier columns are those holding
any |x| >= threshold; the other columns are quantized per row by absmax to int8 (round half to
even); the product is dequantized by row_scale * col_scale / 127^2; outlier columns multiply
the dequantized weight W = CB * SCB / 127 in float64.
"""

from __future__ import annotations

import numpy as np


def quantize_rows_ref(x: np.ndarray, threshold: float = 0.0):
    """Returns (q int8, row_scale float64, outlier_mask bool) for x of shape (..., K)."""
    x = np.asarray(x, dtype=np.float64)
    K = x.shape[-1]
    flat = x.reshape(-1, K)
    if threshold > 0:
        mask = (np.abs(flat) >= threshold).any(axis=0)
    else:
        mask = np.zeros(K, dtype=bool)
    regular = np.where(mask[None, :], 0.0, flat)
    absmax = np.abs(regular).max(axis=1, initial=0.0)
    # x * 127 / absmax with one rounding (x * 127 is exact): exact ties stay ties for rint.
    scaled = np.divide(regular * 127.0, absmax[:, None], out=np.zeros_like(regular), where=absmax[:, None] > 0)
    q = np.clip(np.rint(scaled), -127, 127).astype(np.int8)
    return q.reshape(x.shape), absmax.reshape(x.shape[:-1]), mask


def dequantize_weight_ref(CB: np.ndarray, SCB: np.ndarray) -> np.ndarray:
    """W (N, K) = CB * SCB / 127 in float64."""
    return np.asarray(CB, np.float64) * np.asarray(SCB, np.float64)[:, None] / 127.0


def linear_ref(x, CB, SCB, bias=None, threshold: float = 0.0) -> np.ndarray:
    """The LLM.int8() linear op in float64: x (..., K), CB (N, K) int8, SCB (N,) -> (..., N)."""
    x = np.asarray(x, dtype=np.float64)
    K = x.shape[-1]
    flat = x.reshape(-1, K)
    q, row_scale, mask = quantize_rows_ref(flat, threshold)
    CB64 = np.asarray(CB, np.float64)
    SCB64 = np.asarray(SCB, np.float64)
    out = (q.astype(np.float64) @ CB64.T) * row_scale[:, None] * SCB64[None, :] / 127.0**2
    if mask.any():
        out = out + flat[:, mask] @ dequantize_weight_ref(CB, SCB)[:, mask].T
    if bias is not None:
        out = out + np.asarray(bias, np.float64)[None, :]
    return out.reshape(*x.shape[:-1], CB64.shape[0])


def weight_linear_ref(x, CB, SCB, bias=None) -> np.ndarray:
    """Weight-only int8 linear in float64: x @ (CB * SCB / 127).T + bias."""
    x = np.asarray(x, dtype=np.float64)
    out = x @ dequantize_weight_ref(CB, SCB).T
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out


def grad_input_ref(grad_out, CB, SCB) -> np.ndarray:
    """dL/dx = dL/dy @ W with W = CB * SCB / 127, in float64."""
    return np.asarray(grad_out, np.float64) @ dequantize_weight_ref(CB, SCB)

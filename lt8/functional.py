"""bitsandbytes-compatible ``lt8.functional`` (torch): bitsandbytes' int8 primitives with their
names and signatures (``int8_vectorwise_quant``, ``int8_linear_matmul``, ``int8_mm_dequant``,
``double_quant``, ``transform``, ``get_inverse_transform_indices``, ``undo_layout``).

Each runs lt8's kernels through :mod:`lt8.torch.functional`, lt8's own vocabulary for the same
ops (``quantize_rows``, ``int8_gemm``, ``dequant_epilogue``, ``transform_layout``, ...), which
:mod:`lt8.jax.ops` shares. Functions whose bitsandbytes counterpart returns data-dependent
shapes (outlier column indices) do the same here, which costs a host sync; the fused path
(``int8_linear`` / ``Linear8bitLt``) never does.
"""

from __future__ import annotations

import torch

from lt8.core.layouts import get_inverse_transform_indices, undo_layout
from lt8.torch import functional as _lt8
from lt8.torch._ops import as_threshold, check_dtype, check_float

__all__ = [
    "int8_vectorwise_quant",
    "int8_vectorwise_dequant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "double_quant",
    "transform",
    "quantize_weight",
    "int8_linear",
    "get_inverse_transform_indices",
    "undo_layout",
]


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """Row-wise absmax int8 quantization with outlier columns (lt8's ``quantize_rows``).

    Returns ``(out_row, row_stats, outlier_cols)``: int8 rows (outlier columns zeroed), the
    float32 absmax of each row over the non-outlier columns, and the indices of the outlier
    columns (``None`` when ``threshold == 0``), as in bitsandbytes.
    """
    check_float(A, "A")
    threshold = as_threshold(threshold)
    q, row_stats, mask = _lt8.quantize_rows(A, threshold)
    outlier_cols = mask.nonzero().view(-1) if threshold > 0 else None
    return q, row_stats, outlier_cols


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`int8_vectorwise_quant` (without outliers): float32 ``A * stats / 127``."""
    check_dtype(A, "A", torch.int8)
    check_dtype(stats, "stats", torch.float32)
    return _lt8.dequantize_rows(A, stats, torch.float32)


def int8_linear_matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """Exact int8 product ``A @ B.T`` with int32 results; A is (..., K), B is (N, K)."""
    if dtype != torch.int32:
        raise ValueError(f"dtype must be torch.int32, got {dtype}")
    result = _lt8.int8_gemm(A, B)
    if out is not None:
        return out.copy_(result)
    return result


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Dequantize an int32 product: ``A * row_stats * col_stats / 127**2 (+ bias)``."""
    check_dtype(A, "A", torch.int32)
    check_dtype(row_stats, "row_stats", torch.float32)
    check_dtype(col_stats, "col_stats", torch.float32)
    result = _lt8.dequant_epilogue(A, row_stats, col_stats, bias, dtype)
    if out is not None:
        return out.copy_(result)
    return result


def double_quant(
    A: torch.Tensor,
    col_stats=None,
    row_stats=None,
    out_col=None,
    out_row=None,
    threshold: float = 0.0,
):
    """Row-wise and column-wise int8 quantization of a 2-D matrix, as bitsandbytes' ``double_quant``.

    Returns ``(out_row, out_col, row_stats, col_stats, outlier_cols)``. Both quantizations leave
    the outlier columns out (zeroed) when ``threshold > 0``.
    """
    if A.dim() != 2:
        raise ValueError(f"A must be 2-D, got shape {tuple(A.shape)}")
    check_float(A, "A")
    q_row, r_stats, outlier_cols = int8_vectorwise_quant(A, threshold)
    q_col_t, c_stats, _ = _lt8.quantize_rows(A.t(), 0.0)
    q_col = q_col_t.t().contiguous()
    if outlier_cols is not None and outlier_cols.numel():
        q_col[:, outlier_cols] = 0
    for dst, src in (
        (out_row, q_row),
        (out_col, q_col),
        (row_stats, r_stats),
        (col_stats, c_stats),
    ):
        if dst is not None:
            dst.copy_(src)
    return q_row, q_col, r_stats, c_stats, outlier_cols


def transform(
    A: torch.Tensor,
    to_order: str,
    from_order: str = "row",
    out=None,
    transpose: bool = False,
    state=None,
    ld=None,
):
    """Converts an int8 matrix between row-major and cuBLASLt's tiled orders (lt8's
    ``transform_layout``).

    Returns ``(out, state)`` like bitsandbytes, where ``state = (shape, to_order)`` names the
    logical shape. Going from a tiled order back to ``"row"`` needs that ``state``.
    Tiled outputs are 2-D with cuBLASLt's padded shape.
    """
    del ld  # accepted for bitsandbytes compatibility; lt8 always uses the minimal leading dim
    if A.dim() < 1:
        raise ValueError("A must be an int8 matrix, got a scalar")
    if from_order == "row":
        if A.dim() != 2:
            A = A.reshape(-1, A.shape[-1])
        if transpose:
            A = A.t()
        shape = tuple(A.shape)
    else:
        if state is None:
            raise ValueError(
                f"converting from {from_order!r} needs state=(shape, order) to know the logical shape"
            )
        shape = tuple(state[0])
        if transpose:
            raise ValueError("transpose is only supported when converting from 'row'")
    rows, cols = shape
    result = torch.ops.lt8.transform_layout(A, rows, cols, from_order, to_order)
    if out is not None:
        out.copy_(result)
        result = out
    return result, (shape, to_order)


def quantize_weight(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes a (out, in) weight row-wise: returns int8 ``CB`` and float32 ``SCB``
    (:func:`lt8.torch.functional.quantize_weight`)."""
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (out_features, in_features), got shape {tuple(W.shape)}")
    check_float(W, "W")
    return _lt8.quantize_weight(W)


def int8_linear(
    x: torch.Tensor,
    CB: torch.Tensor,
    SCB: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 0.0,
) -> torch.Tensor:
    """The fused LLM.int8() linear op (:func:`lt8.torch.functional.linear`, whose default
    threshold is 6.0; here 0.0, bitsandbytes' default)."""
    return _lt8.linear(x, CB, SCB, bias, threshold)

"""Functional LLM.int8() ops for torch, in lt8's own vocabulary (``lt8.torch.functional``).

The same functions, with the same argument names and results, as :mod:`lt8.jax.ops`; each runs
one ``torch.ops.lt8`` operator (CPU or CUDA by the tensors' device), so it works under
``torch.compile`` and CUDA graph capture and never synchronises the host. bitsandbytes' names
for these ops (``int8_vectorwise_quant``, ``int8_mm_dequant``, ``matmul``, ...) are in the
bitsandbytes-compatible modules :mod:`lt8.functional` and :mod:`lt8.autograd`.

Conventions: an int8 weight is ``CB`` (out, in) int8, row-major, with float32 row scales
``SCB`` (out,), so that ``W ~= CB * SCB / 127``. Activations are ``(..., K)``: every leading
dimension is a batch dimension. Outlier columns (any ``|value| >= threshold``) are found on the
device; ``threshold=0`` disables them.
"""

from __future__ import annotations

import torch

import lt8.torch._kernels  # noqa: F401  (registers the kernels)
from lt8.torch._ops import as_threshold, check_dtype, check_float
from lt8.torch.autograd import _MatMulFp16Weight

__all__ = [
    "quantize_rows",
    "dequantize_rows",
    "quantize_weight",
    "dequantize_weight",
    "int8_gemm",
    "dequant_epilogue",
    "linear",
    "weight_linear",
    "linear_fp",
    "transform_layout",
]


# --- quantization -----------------------------------------------------------------------------


def quantize_rows(
    x: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    return torch.ops.lt8.quantize_rows(x, as_threshold(threshold))


def dequantize_rows(
    q: torch.Tensor, row_scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`quantize_rows` without outliers: ``q * row_scale / 127`` in ``dtype``."""
    return torch.ops.lt8.dequantize_rows(q, row_scale, dtype)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes a (out, in) float weight row-wise: returns int8 ``CB`` (out, in) and float32
    ``SCB`` (out,), the absmax of each row, so that ``w ~= CB * SCB / 127``."""
    check_float(w, "w")
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    CB, SCB, _ = torch.ops.lt8.quantize_rows(w, 0.0)
    return CB, SCB


def dequantize_weight(
    CB: torch.Tensor, SCB: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``CB * SCB / 127`` as a (out, in) tensor of ``dtype``."""
    check_dtype(CB, "CB", torch.int8)
    if CB.dim() != 2:
        raise ValueError(f"CB must be 2-D (out_features, in_features), got shape {tuple(CB.shape)}")
    return torch.ops.lt8.dequantize_rows(CB, SCB, dtype)


# --- int8 GEMM pieces -------------------------------------------------------------------------


def int8_gemm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Exact int8 product ``A @ B.T`` with int32 results: A (..., K) int8, B (N, K) int8."""
    return torch.ops.lt8.int8_gemm(A, B)


def dequant_epilogue(
    C: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Dequantizes an int32 product: ``C * row_scale[..., None] * col_scale / 127**2 (+ bias)``.

    C is (..., N) int32, row_scale (...) float32, col_scale (N,) float32, bias (N,) float.
    """
    return torch.ops.lt8.dequant_epilogue(C, row_scale, col_scale, bias, dtype)


# --- linear layers ----------------------------------------------------------------------------


def linear(
    x: torch.Tensor,
    CB: torch.Tensor,
    SCB: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
) -> torch.Tensor:
    """The fused LLM.int8() linear op: ``x @ (CB * SCB / 127).T + bias`` with outliers.

    Columns of ``x`` holding any ``|value| >= threshold`` multiply the dequantized weight in
    higher precision; the rest are quantized per row to int8 and multiply ``CB`` exactly.
    Output: (..., N) in x's dtype. Differentiable in ``x`` (``grad_x = grad @ W``, the
    straight-through estimator) and ``bias``; ``CB`` and ``SCB`` are constants.
    """
    return torch.ops.lt8.int8_linear(x, CB, SCB, bias, as_threshold(threshold))


def weight_linear(
    x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Weight-only int8 linear (bitsandbytes' ``force_no_igemmlt`` path): x stays in its float
    dtype and multiplies the dequantized weight, accumulating in float32:
    ``(x @ CB.T) * SCB / 127 + bias``. Shapes, dtypes and gradients as :func:`linear`."""
    return torch.ops.lt8.int8_weight_linear(x, CB, SCB, bias)


def linear_fp(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
) -> torch.Tensor:
    """LLM.int8() linear with a floating-point master weight (training, ``has_fp16_weights``).

    The forward quantizes ``w`` (out, in) row-wise and runs :func:`linear`; the backward gives
    the ordinary gradients of ``x @ w.T + bias`` (``grad_x = g @ w``, ``grad_w = g^T x``,
    ``grad_bias = sum(g)``), each in its primal's dtype.
    """
    return _MatMulFp16Weight.apply(x, w, bias, as_threshold(threshold), False, ("x", "w"))


# --- layouts ----------------------------------------------------------------------------------


def transform_layout(
    a: torch.Tensor,
    to_order: str,
    from_order: str = "row",
    shape: tuple[int, int] | None = None,
) -> torch.Tensor:
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
    if from_order == "row":
        if a.dim() != 2:
            raise ValueError(
                f"a must be 2-D (rows, cols) when from_order='row', got shape {tuple(a.shape)}"
            )
        if shape is not None and tuple(shape) != tuple(a.shape):
            raise ValueError(f"shape {tuple(shape)} does not match a's shape {tuple(a.shape)}")
        rows, cols = a.shape
    else:
        if shape is None:
            raise ValueError(
                f"converting from {from_order!r} needs shape=(rows, cols), the logical shape"
            )
        rows, cols = (int(s) for s in shape)
    return torch.ops.lt8.transform_layout(a, rows, cols, from_order, to_order)

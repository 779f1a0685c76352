"""The catalogue of lt8's torch operators: one schema, one fake (meta) kernel and, where it has
one, one autograd formula per op. Backend kernels live in ``_kernels.py``.

The ops are defined with the low-level ``torch.library.Library`` API rather than ``custom_op``:
it costs about half the host time per call (docs/DESIGN.md), which matters at decode sizes.
Output shapes depend only on input shapes (outlier columns are a mask, found on the device), so
every op works under ``torch.compile(fullgraph=True)`` and CUDA graph capture. NaN and +-inf
reach exactly the output rows (of an activation) or columns (of a weight) they touch:
docs/NUMERICS.md.
"""

from __future__ import annotations

import torch

from lt8._native import LAYOUT_CODES
from lt8.core.layouts import padded_shape  # noqa: F401  (re-exported: lt8.torch.nn uses it)

lib = torch.library.Library("lt8", "DEF")

lib.define(
    "quantize_rows(Tensor x, float threshold=0.0) -> (Tensor q, Tensor row_scale, Tensor outlier_mask)"
)
lib.define("dequantize_rows(Tensor q, Tensor row_scale, ScalarType dtype=float) -> Tensor")
lib.define("int8_gemm(Tensor A, Tensor B) -> Tensor")
lib.define(
    "dequant_epilogue(Tensor C, Tensor row_scale, Tensor col_scale, Tensor? bias=None, "
    "ScalarType dtype=half) -> Tensor"
)
lib.define("transform_layout(Tensor x, int rows, int cols, str from_order, str to_order) -> Tensor")
lib.define(
    "int8_linear(Tensor x, Tensor CB, Tensor SCB, Tensor? bias=None, float threshold=0.0) -> Tensor"
)
lib.define("int8_weight_linear(Tensor x, Tensor CB, Tensor SCB, Tensor? bias=None) -> Tensor")
lib.define("int8_linear_grad_input(Tensor grad_out, Tensor CB, Tensor SCB) -> Tensor")
lib.define(
    "add_outlier_terms(Tensor x, Tensor outlier_mask, Tensor CB, Tensor SCB, Tensor base) -> Tensor"
)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --- shared validation (fake and real kernels both call these) -----------------------------
# Cheap attribute checks only: they run on every call of an op (no .item(), no allocation).


def check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_dtype(t: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")


def check_out_dtype(dtype: torch.dtype, name: str = "dtype") -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {dtype}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; move them to one "
                "device (for a module: module.to(device))"
            )


def check_matrix(x: torch.Tensor, name: str) -> None:
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (..., features), got a scalar")


def check_int8_weight(CB: torch.Tensor, SCB: torch.Tensor) -> int:
    """CB int8 (N, K) and SCB float32 (N,); returns N."""
    if CB.dtype != torch.int8:
        check_dtype(CB, "CB", torch.int8)
    if SCB.dtype != torch.float32:
        check_dtype(SCB, "SCB", torch.float32)
    if CB.dim() != 2:
        raise ValueError(f"CB must be 2-D (out_features, in_features), got shape {tuple(CB.shape)}")
    N = CB.shape[0]
    if SCB.shape != (N,):
        raise ValueError(f"SCB must have shape ({N},) (CB's rows), got {tuple(SCB.shape)}")
    return N


def check_weight(CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None, K: int) -> None:
    N = check_int8_weight(CB, SCB)
    if CB.shape[1] != K:
        raise ValueError(
            f"x has {K} features but CB expects {CB.shape[1]} (CB shape {tuple(CB.shape)})"
        )
    if bias is not None:
        check_float(bias, "bias")
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")


def check_devices(
    x: torch.Tensor,
    CB: torch.Tensor,
    SCB: torch.Tensor,
    bias: torch.Tensor | None,
    x_name: str = "x",
) -> None:
    """check_same_device for the (activation, CB, SCB, bias) of the linear ops, with a cheap
    first test on the per-call path: device indices (-1 for the CPU, i for cuda:i)."""
    d = x.get_device()
    if (
        CB.get_device() != d
        or SCB.get_device() != d
        or (bias is not None and bias.get_device() != d)
    ):
        check_same_device(**{x_name: x}, CB=CB, SCB=SCB, bias=bias)


def check_threshold(threshold: float) -> None:
    if not threshold >= 0.0:  # also rejects NaN
        raise ValueError(f"threshold must be a number >= 0 (0 disables outliers), got {threshold}")


def as_threshold(threshold) -> float:
    """``threshold`` as a Python float, or a clear error: TypeError for something that is not a
    real number, ValueError for a negative one or NaN. For API boundaries, not per-call paths."""
    if threshold is None or isinstance(threshold, (bool, str, bytes)):
        raise TypeError(f"threshold must be a number >= 0 (0 disables outliers), got {threshold!r}")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(
            f"threshold must be a number >= 0 (0 disables outliers), got {threshold!r}"
        ) from None
    check_threshold(t)
    return t


def check_layout(order: str, name: str) -> None:
    if order not in LAYOUT_CODES:
        raise ValueError(f"{name} must be one of {sorted(LAYOUT_CODES)}, got {order!r}")


# One validator per op, shared by its fake and its real kernels, so that eager calls, meta/fake
# tensors and torch.compile raise the same errors.


def check_quantize_rows(x, threshold) -> None:
    check_float(x, "x")
    check_matrix(x, "x")
    check_threshold(threshold)


def check_dequantize_rows(q, row_scale, dtype) -> None:
    check_dtype(q, "q", torch.int8)
    check_dtype(row_scale, "row_scale", torch.float32)
    check_matrix(q, "q")
    check_out_dtype(dtype)
    if row_scale.shape != q.shape[:-1]:
        raise ValueError(
            f"row_scale must have shape q.shape[:-1] = {tuple(q.shape[:-1])}, got "
            f"{tuple(row_scale.shape)}"
        )
    check_same_device(q=q, row_scale=row_scale)


def check_int8_gemm(A, B) -> None:
    check_dtype(A, "A", torch.int8)
    check_dtype(B, "B", torch.int8)
    check_matrix(A, "A")
    if B.dim() != 2 or B.shape[1] != A.shape[-1]:
        raise ValueError(
            f"B must have shape (N, {A.shape[-1]}) (A's last dimension), got {tuple(B.shape)}"
        )
    check_same_device(A=A, B=B)


def check_dequant_epilogue(C_, row_scale, col_scale, bias, dtype) -> None:
    check_dtype(C_, "C", torch.int32)
    check_dtype(row_scale, "row_scale", torch.float32)
    check_dtype(col_scale, "col_scale", torch.float32)
    check_matrix(C_, "C")
    check_out_dtype(dtype)
    N = C_.shape[-1]
    rows = C_.shape[:-1]
    # bitsandbytes passes the row scales of a batched product flattened: (M,) for C (..., N).
    if row_scale.shape != rows and row_scale.shape != (rows.numel(),):
        flat = f" or ({rows.numel()},)" if len(rows) > 1 else ""
        raise ValueError(
            f"row_scale must have shape C.shape[:-1] = {tuple(rows)}{flat}, got "
            f"{tuple(row_scale.shape)}"
        )
    if col_scale.shape != (N,):
        raise ValueError(
            f"col_scale must have shape ({N},) (C's last dimension), got {tuple(col_scale.shape)}"
        )
    if bias is not None:
        check_float(bias, "bias")
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
    check_same_device(C=C_, row_scale=row_scale, col_scale=col_scale, bias=bias)


def check_transform_layout(x, rows, cols, from_order, to_order) -> None:
    check_dtype(x, "x", torch.int8)
    check_layout(from_order, "from_order")
    check_layout(to_order, "to_order")
    if rows < 0 or cols < 0:
        raise ValueError(f"rows and cols must be >= 0, got {rows} and {cols}")
    in_rows, in_cols = padded_shape(from_order, rows, cols)
    if x.numel() != in_rows * in_cols:
        raise ValueError(
            f"x has {x.numel()} elements but a {from_order} matrix of logical shape ({rows}, {cols}) "
            f"has {in_rows * in_cols}"
        )


def check_linear(x, CB, SCB, bias, threshold) -> None:
    check_weight_linear(x, CB, SCB, bias)
    if not threshold >= 0.0:
        check_threshold(threshold)


def check_weight_linear(x, CB, SCB, bias) -> None:
    if x.dtype not in FLOAT_DTYPES:
        check_float(x, "x")
    check_matrix(x, "x")
    check_weight(CB, SCB, bias, x.shape[-1])
    check_devices(x, CB, SCB, bias)


def check_grad_input(grad_out, CB, SCB) -> None:
    check_float(grad_out, "grad_out")
    check_matrix(grad_out, "grad_out")
    N = check_int8_weight(CB, SCB)
    if grad_out.shape[-1] != N:
        raise ValueError(
            f"grad_out has {grad_out.shape[-1]} features but CB has {N} rows "
            f"(out_features; CB shape {tuple(CB.shape)})"
        )
    check_devices(grad_out, CB, SCB, None, "grad_out")


def check_add_outlier_terms(x, outlier_mask, CB, SCB, base) -> None:
    check_float(x, "x")
    check_matrix(x, "x")
    N = check_int8_weight(CB, SCB)
    K = x.shape[-1]
    if CB.shape[1] != K:
        raise ValueError(
            f"x has {K} features but CB expects {CB.shape[1]} (CB shape {tuple(CB.shape)})"
        )
    if outlier_mask.dtype not in (torch.bool, torch.uint8) or tuple(outlier_mask.shape) != (K,):
        raise ValueError(
            f"outlier_mask must be bool or uint8 of shape ({K},), got {outlier_mask.dtype} "
            f"{tuple(outlier_mask.shape)}"
        )
    check_dtype(base, "base", torch.float32)
    if tuple(base.shape) != (*x.shape[:-1], N):
        raise ValueError(f"base must have shape {(*x.shape[:-1], N)}, got {tuple(base.shape)}")
    check_devices(x, CB, SCB, None)
    check_same_device(x=x, outlier_mask=outlier_mask, base=base)


# --- fake kernels ---------------------------------------------------------------------------


@torch.library.register_fake("lt8::quantize_rows", lib=lib)
def _(x, threshold=0.0):
    check_quantize_rows(x, threshold)
    return (
        torch.empty(x.shape, dtype=torch.int8, device=x.device),
        torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device),
        torch.empty(x.shape[-1:], dtype=torch.bool, device=x.device),
    )


@torch.library.register_fake("lt8::dequantize_rows", lib=lib)
def _(q, row_scale, dtype=torch.float32):
    check_dequantize_rows(q, row_scale, dtype)
    return torch.empty(q.shape, dtype=dtype, device=q.device)


@torch.library.register_fake("lt8::int8_gemm", lib=lib)
def _(A, B):
    check_int8_gemm(A, B)
    return torch.empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32, device=A.device)


@torch.library.register_fake("lt8::dequant_epilogue", lib=lib)
def _(C_, row_scale, col_scale, bias=None, dtype=torch.float16):
    check_dequant_epilogue(C_, row_scale, col_scale, bias, dtype)
    return torch.empty(C_.shape, dtype=dtype, device=C_.device)


@torch.library.register_fake("lt8::transform_layout", lib=lib)
def _(x, rows, cols, from_order, to_order):
    check_transform_layout(x, rows, cols, from_order, to_order)
    return torch.empty(padded_shape(to_order, rows, cols), dtype=torch.int8, device=x.device)


@torch.library.register_fake("lt8::int8_linear", lib=lib)
def _(x, CB, SCB, bias=None, threshold=0.0):
    check_linear(x, CB, SCB, bias, threshold)
    return torch.empty((*x.shape[:-1], CB.shape[0]), dtype=x.dtype, device=x.device)


@torch.library.register_fake("lt8::int8_weight_linear", lib=lib)
def _(x, CB, SCB, bias=None):
    check_weight_linear(x, CB, SCB, bias)
    return torch.empty((*x.shape[:-1], CB.shape[0]), dtype=x.dtype, device=x.device)


@torch.library.register_fake("lt8::int8_linear_grad_input", lib=lib)
def _(grad_out, CB, SCB):
    check_grad_input(grad_out, CB, SCB)
    return torch.empty(
        (*grad_out.shape[:-1], CB.shape[1]), dtype=grad_out.dtype, device=grad_out.device
    )


@torch.library.register_fake("lt8::add_outlier_terms", lib=lib)
def _(x, outlier_mask, CB, SCB, base):
    check_add_outlier_terms(x, outlier_mask, CB, SCB, base)
    return torch.empty(base.shape, dtype=torch.float32, device=base.device)


# --- autograd -------------------------------------------------------------------------------


def _linear_setup_context(ctx, inputs, output):
    CB, SCB = inputs[1], inputs[2]
    bias = inputs[3] if len(inputs) > 3 else None
    ctx.save_for_backward(CB, SCB)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _sum_rows(g: torch.Tensor) -> torch.Tensor:
    """float32 sum of ``g`` (..., N) over its leading dimensions. (A reshape to (-1, N) is
    ambiguous when N == 0, and ``sum(dim=())`` would sum everything.)"""
    dims = tuple(range(g.dim() - 1))
    return g.sum(dims, dtype=torch.float32) if dims else g.to(torch.float32)


def _linear_backward(ctx, grad):
    """dx = dy @ W (W = CB * SCB / 127, straight through the quantization), db = sum(dy)."""
    CB, SCB = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grads = [None] * len(needs)
    if needs[0]:
        grads[0] = torch.ops.lt8.int8_linear_grad_input(grad, CB, SCB)
    if len(needs) > 3 and needs[3]:
        grads[3] = _sum_rows(grad).to(ctx.bias_dtype)
    return tuple(grads)


# Both linear ops (fused and weight-only) differentiate the same way.
for _op in ("lt8::int8_linear", "lt8::int8_weight_linear"):
    torch.library.register_autograd(
        _op, _linear_backward, setup_context=_linear_setup_context, lib=lib
    )

"""The catalogue of lt8's torch operators: one schema, one fake (meta) kernel and, where it has
one, one autograd formula per op. Backend kernels live in ``_kernels.py``.

The ops are defined with the low-level ``torch.library.Library`` API rather than ``custom_op``:
it costs about half the host time per call (DESIGN.md), which matters at decode sizes.
Output shapes depend only on input shapes (outlier columns are a mask, found on the device), so
every op works under ``torch.compile(fullgraph=True)`` and CUDA graph capture.
"""

from __future__ import annotations

import torch

from lt8._native import LAYOUT_CODES, C

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

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --- shared validation (fake and real kernels both call these) -----------------------------


def check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_dtype(t: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; move them to one "
                "device (for a module: module.to(device))"
            )


def check_weight(CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None, K: int) -> None:
    check_dtype(CB, "CB", torch.int8)
    check_dtype(SCB, "SCB", torch.float32)
    if CB.dim() != 2:
        raise ValueError(f"CB must be 2-D (out_features, in_features), got shape {tuple(CB.shape)}")
    N = CB.shape[0]
    if CB.shape[1] != K:
        raise ValueError(f"x has {K} features but CB expects {CB.shape[1]} (CB shape {tuple(CB.shape)})")
    if SCB.shape != (N,):
        raise ValueError(f"SCB must have shape ({N},), got {tuple(SCB.shape)}")
    if bias is not None:
        check_float(bias, "bias")
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")


def check_threshold(threshold: float) -> None:
    if not threshold >= 0.0:  # also rejects NaN
        raise ValueError(f"threshold must be a number >= 0 (0 disables outliers), got {threshold}")


def check_layout(order: str, name: str) -> None:
    if order not in LAYOUT_CODES:
        raise ValueError(f"{name} must be one of {sorted(LAYOUT_CODES)}, got {order!r}")


def check_matrix(x: torch.Tensor, name: str) -> None:
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (..., features), got a scalar")


def padded_shape(order: str, rows: int, cols: int) -> tuple[int, int]:
    return tuple(C.layout_padded_shape(LAYOUT_CODES[order], rows, cols))


# --- fake kernels ---------------------------------------------------------------------------


@torch.library.register_fake("lt8::quantize_rows", lib=lib)
def _(x, threshold=0.0):
    check_float(x, "x")
    check_matrix(x, "x")
    check_threshold(threshold)
    return (
        torch.empty(x.shape, dtype=torch.int8, device=x.device),
        torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device),
        torch.empty(x.shape[-1:], dtype=torch.bool, device=x.device),
    )


@torch.library.register_fake("lt8::dequantize_rows", lib=lib)
def _(q, row_scale, dtype=torch.float32):
    check_dtype(q, "q", torch.int8)
    check_dtype(row_scale, "row_scale", torch.float32)
    torch._check(row_scale.shape == q.shape[:-1], lambda: "row_scale must have shape q.shape[:-1]")
    return torch.empty(q.shape, dtype=dtype, device=q.device)


@torch.library.register_fake("lt8::int8_gemm", lib=lib)
def _(A, B):
    check_dtype(A, "A", torch.int8)
    check_dtype(B, "B", torch.int8)
    torch._check(B.dim() == 2 and B.shape[1] == A.shape[-1], lambda: "B must be (N, K) with A's K")
    return torch.empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32, device=A.device)


@torch.library.register_fake("lt8::dequant_epilogue", lib=lib)
def _(C_, row_scale, col_scale, bias=None, dtype=torch.float16):
    check_dtype(C_, "C", torch.int32)
    return torch.empty(C_.shape, dtype=dtype, device=C_.device)


@torch.library.register_fake("lt8::transform_layout", lib=lib)
def _(x, rows, cols, from_order, to_order):
    check_layout(from_order, "from_order")
    check_layout(to_order, "to_order")
    return torch.empty(padded_shape(to_order, rows, cols), dtype=torch.int8, device=x.device)


@torch.library.register_fake("lt8::int8_linear", lib=lib)
def _(x, CB, SCB, bias=None, threshold=0.0):
    check_float(x, "x")
    check_matrix(x, "x")
    check_weight(CB, SCB, bias, x.shape[-1])
    check_threshold(threshold)
    return torch.empty((*x.shape[:-1], CB.shape[0]), dtype=x.dtype, device=x.device)


@torch.library.register_fake("lt8::int8_weight_linear", lib=lib)
def _(x, CB, SCB, bias=None):
    check_float(x, "x")
    check_matrix(x, "x")
    check_weight(CB, SCB, bias, x.shape[-1])
    return torch.empty((*x.shape[:-1], CB.shape[0]), dtype=x.dtype, device=x.device)


@torch.library.register_fake("lt8::int8_linear_grad_input", lib=lib)
def _(grad_out, CB, SCB):
    check_float(grad_out, "grad_out")
    return torch.empty((*grad_out.shape[:-1], CB.shape[1]), dtype=grad_out.dtype, device=grad_out.device)


# --- autograd -------------------------------------------------------------------------------


def _linear_setup_context(ctx, inputs, output):
    CB, SCB = inputs[1], inputs[2]
    bias = inputs[3] if len(inputs) > 3 else None
    ctx.save_for_backward(CB, SCB)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _linear_backward(ctx, grad):
    """dx = dy @ W (W = CB * SCB / 127, straight through the quantization), db = sum(dy)."""
    CB, SCB = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grads = [None] * len(needs)
    if needs[0]:
        grads[0] = torch.ops.lt8.int8_linear_grad_input(grad, CB, SCB)
    if len(needs) > 3 and needs[3]:
        grads[3] = grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
    return tuple(grads)


# Both linear ops (fused and weight-only) differentiate the same way.
for _op in ("lt8::int8_linear", "lt8::int8_weight_linear"):
    torch.library.register_autograd(_op, _linear_backward, setup_context=_linear_setup_context, lib=lib)

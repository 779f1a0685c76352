"""``MatmulLtState`` (``Linear8bitLt``'s per-layer state, field for field bitsandbytes') and the
autograd function of the float-master-weight path. bitsandbytes' ``matmul`` is in
:mod:`lt8.autograd`; lt8's functional ops are in :mod:`lt8.torch.functional`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import lt8.torch._kernels  # noqa: F401  (registers the kernels)
from lt8.torch._ops import _sum_rows, check_float, check_matrix

__all__ = ["MatmulLtState"]


@dataclass
class MatmulLtState:
    """Per-layer LLM.int8() state, field for field as bitsandbytes' ``MatmulLtState``.

    Invariants once a layer is quantized: ``CB`` is the (out, in) int8 weight in row-major order,
    ``SCB`` its (out,) float32 row absmax. lt8's GEMM reads row-major weights on every GPU, so it
    never keeps a tiled copy: ``CxB`` and ``SB`` stay ``None`` and ``formatB`` is ``"row"``.
    ``force_no_igemmlt=True`` selects bitsandbytes' weight-only path: activations are not
    quantized, they multiply the dequantized int8 weight (more accurate, no outlier split).
    """

    CB: torch.Tensor | None = None
    CxB: torch.Tensor | None = None
    SB: tuple | None = None
    SCB: torch.Tensor | None = None
    CxBt: torch.Tensor | None = None
    SBt: tuple | None = None
    CBt: torch.Tensor | None = None
    subB: torch.Tensor | None = None
    outlier_pool: object | None = None
    has_accumulated_gradients: bool = False
    threshold: float = 0.0
    idx: torch.Tensor | None = None
    is_training: bool = True
    has_fp16_weights: bool = True
    memory_efficient_backward: bool = False
    use_pool: bool = False
    formatB: str = "row"
    force_no_igemmlt: bool = False

    def reset_grads(self) -> None:
        self.CB = self.CxB = self.SB = self.SCB = None
        self.CxBt = self.SBt = self.CBt = None


def _master_weight_for_quantization(W: torch.Tensor, x: torch.Tensor, names: tuple) -> torch.Tensor:
    """Checks a float master weight against x; float64 is rounded to float32 for quantization
    (int8 rows with float32 scales keep less than float32 does). ``names``: (x's, W's)."""
    x_name, name = names
    if W.dtype == torch.float64:
        W = W.to(torch.float32)
    check_float(W, name)
    if W.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (out_features, in_features), got shape {tuple(W.shape)}"
        )
    check_matrix(x, x_name)
    if W.shape[1] != x.shape[-1]:
        raise ValueError(
            f"{x_name} has {x.shape[-1]} features but {name} expects {W.shape[1]} "
            f"({name} shape {tuple(W.shape)})"
        )
    return W


class _MatMulFp16Weight(torch.autograd.Function):
    """LLM.int8() forward with a floating-point master weight (``has_fp16_weights=True``): the
    weight is quantized in every forward; gradients are the ordinary ones of ``x @ W.T + b``."""

    @staticmethod
    def forward(ctx, x, W, bias, threshold, weight_only=False, names=("x", "weight")):
        CB, SCB, _ = torch.ops.lt8.quantize_rows(_master_weight_for_quantization(W, x, names), 0.0)
        if weight_only:
            out = torch.ops.lt8.int8_weight_linear(x, CB, SCB, bias)
        else:
            out = torch.ops.lt8.int8_linear(x, CB, SCB, bias, threshold)
        ctx.save_for_backward(x, W)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, W = ctx.saved_tensors
        grad_x = grad_W = grad_bias = None
        (N, K), M = W.shape, math.prod(grad.shape[:-1])
        g2 = grad.reshape(M, N)  # explicit sizes: a -1 is ambiguous when N or K is 0
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ W.to(grad.dtype)).reshape(*grad.shape[:-1], K)
        if ctx.needs_input_grad[1]:
            grad_W = g2.t().to(W.dtype) @ x.reshape(M, K).to(W.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = _sum_rows(grad).to(ctx.bias_dtype)
        return grad_x, grad_W, grad_bias, None, None, None

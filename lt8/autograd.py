"""bitsandbytes-compatible ``lt8.autograd`` (torch): ``MatmulLtState`` and ``matmul`` with
bitsandbytes' names and signatures, and its layout helpers. lt8's own functional ops are
:mod:`lt8.torch.functional`."""

from __future__ import annotations

import torch

from lt8.functional import get_inverse_transform_indices, undo_layout
from lt8.torch._ops import as_threshold, check_float
from lt8.torch.autograd import MatmulLtState, _MatMulFp16Weight

__all__ = ["MatmulLtState", "matmul", "get_inverse_transform_indices", "undo_layout"]


def matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    state: MatmulLtState | None = None,
    threshold: float = 0.0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A @ B.T + bias`` through LLM.int8(), as ``bitsandbytes.matmul``.

    With ``state.has_fp16_weights`` (the default) ``B`` is a floating-point (out, in) weight that
    is quantized on the fly and receives an ordinary gradient. Otherwise the int8 weight is
    ``state.CB`` (or ``B`` itself when it is int8) with scales ``state.SCB``; then only ``A`` and
    ``bias`` get gradients. ``threshold > 0`` sets ``state.threshold``; negative or NaN raises.
    """
    threshold = as_threshold(threshold)
    check_float(A, "A")
    state = state or MatmulLtState()
    if threshold > 0.0:
        state.threshold = threshold
    if state.has_fp16_weights and B.dtype != torch.int8:
        result = _MatMulFp16Weight.apply(
            A, B, bias, float(state.threshold), state.force_no_igemmlt, ("A", "B")
        )
    else:
        CB = state.CB if state.CB is not None else B
        SCB = state.SCB if state.SCB is not None else getattr(B, "SCB", None)
        if SCB is None:
            raise ValueError(
                "an int8 weight needs its scales: set state.SCB (or pass an Int8Params with SCB)"
            )
        if state.force_no_igemmlt:
            result = torch.ops.lt8.int8_weight_linear(A, CB, SCB, bias)
        else:
            result = torch.ops.lt8.int8_linear(A, CB, SCB, bias, float(state.threshold))
    if out is not None:
        return out.copy_(result)
    return result

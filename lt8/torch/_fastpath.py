"""The eager inference fast path of ``Linear8bitLt``: one native call, no dispatcher.

At decode sizes the GPU work of a layer is a few tens of microseconds, so host time decides
speed (docs/DESIGN.md, "Host time"). ``torch.ops.lt8.int8_linear`` costs a dispatcher round
trip plus the Python autograd wrapper that ``register_autograd`` installs, even under
``no_grad``. When nothing needs a gradient and torch is not tracing, ``Linear8bitLt.forward``
calls the native kernel directly instead, with the weight's checks done once per weight
(``PreparedWeight``) and only the activation's checked per call. Same kernel, same bits.
"""

from __future__ import annotations

import weakref

import torch

from lt8._native import DTYPE_F32, C
from lt8.torch import _ops as ops
from lt8.torch._kernels import _DTYPE_CODES, _exec, check_cuda_device


def eligible(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True when the direct call gives exactly what the registered op would: ``x`` is a plain
    tensor (not a subclass or a fake), no gradient is needed and torch is not compiling."""
    if type(x) is not torch.Tensor:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    return not _is_compiling()


_is_compiling = torch.compiler.is_compiling


class PreparedWeight:
    """What the kernel needs of a validated (CB, SCB, bias) triple, reused while the module's
    tensors stay the same objects with the same storage. Holds only weak references: a stale
    entry never keeps a moved or offloaded weight alive."""

    __slots__ = ("refs", "ptrs", "N", "K", "device", "bias_code")

    def __init__(self, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None):
        if CB.dim() != 2:
            raise ValueError(
                f"CB must be 2-D (out_features, in_features), got shape {tuple(CB.shape)}"
            )
        ops.check_weight(CB, SCB, bias, CB.shape[1])
        ops.check_same_device(CB=CB, SCB=SCB, bias=bias)
        if CB.device.type == "cuda":
            check_cuda_device(CB.device)  # a clear error on builds without usable CUDA kernels
        self.refs = (weakref.ref(CB), weakref.ref(SCB), None if bias is None else weakref.ref(bias))
        self.ptrs = _ptrs(CB, SCB, bias)
        self.N, self.K = CB.shape
        self.device = CB.device
        self.bias_code = DTYPE_F32 if bias is None else _DTYPE_CODES[bias.dtype]

    @staticmethod
    def usable(CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """Contiguous CPU/CUDA weights only (the registered op handles the rest)."""
        return (
            CB.device.type in ("cpu", "cuda")
            and CB.is_contiguous()
            and SCB.is_contiguous()
            and (bias is None or bias.is_contiguous())
        )

    def matches(self, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None) -> bool:
        r_cb, r_scb, r_b = self.refs
        if r_cb() is not CB or r_scb() is not SCB or (None if r_b is None else r_b()) is not bias:
            return False
        # Module._apply and Int8Params.to swap .data in place: compare the storage too.
        return self.ptrs == _ptrs(CB, SCB, bias)

    def linear(self, x: torch.Tensor, threshold: float) -> torch.Tensor:
        """The fused op on ``x`` with the weight this entry was built from (checked by
        ``matches`` just before)."""
        code = _DTYPE_CODES.get(x.dtype)
        if (
            code is None
            or x.dim() < 1
            or x.shape[-1] != self.K
            or x.device != self.device
            or not threshold >= 0.0
        ):
            # Let the registered op raise its full, argument-naming error.
            r_b = self.refs[2]
            return torch.ops.lt8.int8_linear(
                x, self.refs[0](), self.refs[1](), None if r_b is None else r_b(), threshold
            )
        x = x.contiguous()
        K, N = self.K, self.N
        M = x.numel() // K if K else torch.Size(x.shape[:-1]).numel()
        out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
        ex = _exec(x)
        ws_bytes = C.linear_workspace_size(M, N, K, code, threshold, ex[0])
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device)
        cb_ptr, scb_ptr, bias_ptr = self.ptrs
        C.int8_linear(
            *ex,
            code,
            x.data_ptr(),
            cb_ptr,
            scb_ptr,
            self.bias_code,
            bias_ptr or 0,
            M,
            N,
            K,
            threshold,
            out.data_ptr(),
            ws.data_ptr(),
            ws_bytes,
        )
        return out


def _ptrs(CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    return (CB.data_ptr(), SCB.data_ptr(), None if bias is None else bias.data_ptr())

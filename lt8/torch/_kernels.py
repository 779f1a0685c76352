"""CPU and CUDA kernels of the lt8 torch ops: validate, then hand pointers and the current stream
to ``lt8._C``. No math happens here; it all lives in the one kernel source under ``cuda/``."""

from __future__ import annotations

import torch

from lt8._native import (
    DEVICE_CPU,
    DEVICE_CUDA,
    DTYPE_BF16,
    DTYPE_F16,
    DTYPE_F32,
    LAYOUT_CODES,
    C,
)
from lt8.torch import _ops as ops
from lt8.torch._ops import lib

_DTYPE_CODES = {torch.float32: DTYPE_F32, torch.float16: DTYPE_F16, torch.bfloat16: DTYPE_BF16}


def _exec(t: torch.Tensor) -> tuple[int, int, int]:
    """(device code, stream handle, device index) for the tensor's device."""
    if t.device.type == "cuda":
        return DEVICE_CUDA, torch.cuda.current_stream(t.device).cuda_stream, t.device.index
    if t.device.type != "cpu":
        raise ValueError(f"lt8 runs on cpu and cuda tensors, got a tensor on {t.device}")
    return DEVICE_CPU, 0, -1


def _rows(x: torch.Tensor) -> tuple[int, int]:
    K = x.shape[-1]
    return (x.numel() // K if K else int(torch.Size(x.shape[:-1]).numel())), K


def _bias_arg(bias):
    """(contiguous bias kept alive by the caller, dtype code, pointer); pointer 0 means no bias."""
    if bias is None:
        return None, DTYPE_F32, 0
    bias = bias.contiguous()
    return bias, _DTYPE_CODES[bias.dtype], bias.data_ptr()


def quantize_rows(x, threshold=0.0):
    ops.check_float(x, "x")
    ops.check_matrix(x, "x")
    ops.check_threshold(threshold)
    x = x.contiguous()
    M, K = _rows(x)
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    row_scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    mask = torch.empty(K, dtype=torch.bool, device=x.device)
    C.quantize_rows(*_exec(x), _DTYPE_CODES[x.dtype], x.data_ptr(), M, K, float(threshold),
                    q.data_ptr(), row_scale.data_ptr(), mask.data_ptr())
    return q, row_scale, mask


def dequantize_rows(q, row_scale, dtype=torch.float32):
    ops.check_dtype(q, "q", torch.int8)
    ops.check_dtype(row_scale, "row_scale", torch.float32)
    if dtype not in _DTYPE_CODES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if tuple(row_scale.shape) != tuple(q.shape[:-1]):
        raise ValueError(f"row_scale must have shape {tuple(q.shape[:-1])}, got {tuple(row_scale.shape)}")
    ops.check_same_device(q=q, row_scale=row_scale)
    q, row_scale = q.contiguous(), row_scale.contiguous()
    M, K = _rows(q)
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    C.dequantize_rows(*_exec(q), q.data_ptr(), row_scale.data_ptr(), M, K, _DTYPE_CODES[dtype],
                      out.data_ptr())
    return out


def int8_gemm(A, B):
    ops.check_dtype(A, "A", torch.int8)
    ops.check_dtype(B, "B", torch.int8)
    if B.dim() != 2 or B.shape[1] != A.shape[-1]:
        raise ValueError(f"B must have shape (N, {A.shape[-1]}), got {tuple(B.shape)}")
    ops.check_same_device(A=A, B=B)
    A, B = A.contiguous(), B.contiguous()
    M, K = _rows(A)
    N = B.shape[0]
    out = torch.empty((*A.shape[:-1], N), dtype=torch.int32, device=A.device)
    C.int8_gemm(*_exec(A), A.data_ptr(), B.data_ptr(), M, N, K, out.data_ptr())
    return out


def dequant_epilogue(C_, row_scale, col_scale, bias=None, dtype=torch.float16):
    ops.check_dtype(C_, "C", torch.int32)
    ops.check_dtype(row_scale, "row_scale", torch.float32)
    ops.check_dtype(col_scale, "col_scale", torch.float32)
    if dtype not in _DTYPE_CODES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    M, N = _rows(C_)
    if row_scale.numel() != M or col_scale.numel() != N:
        raise ValueError(
            f"row_scale must have {M} elements and col_scale {N}, got {row_scale.numel()} and "
            f"{col_scale.numel()}"
        )
    if bias is not None:
        ops.check_float(bias, "bias")
        if bias.numel() != N:
            raise ValueError(f"bias must have {N} elements, got {bias.numel()}")
    ops.check_same_device(C=C_, row_scale=row_scale, col_scale=col_scale, bias=bias)
    C_, row_scale, col_scale = C_.contiguous(), row_scale.contiguous(), col_scale.contiguous()
    bias, bias_code, bias_ptr = _bias_arg(bias)
    out = torch.empty(C_.shape, dtype=dtype, device=C_.device)
    C.dequant_epilogue(*_exec(C_), C_.data_ptr(), row_scale.data_ptr(), col_scale.data_ptr(),
                       bias_code, bias_ptr, M, N, _DTYPE_CODES[dtype], out.data_ptr())
    return out


def transform_layout(x, rows, cols, from_order, to_order):
    ops.check_dtype(x, "x", torch.int8)
    ops.check_layout(from_order, "from_order")
    ops.check_layout(to_order, "to_order")
    if rows < 0 or cols < 0:
        raise ValueError(f"rows and cols must be >= 0, got {rows} and {cols}")
    in_rows, in_cols = ops.padded_shape(from_order, rows, cols)
    if x.numel() != in_rows * in_cols:
        raise ValueError(
            f"x has {x.numel()} elements but a {from_order} matrix of logical shape ({rows}, {cols}) "
            f"has {in_rows * in_cols}"
        )
    x = x.contiguous()
    out = torch.empty(ops.padded_shape(to_order, rows, cols), dtype=torch.int8, device=x.device)
    C.transform_layout(*_exec(x), x.data_ptr(), out.data_ptr(), rows, cols,
                       LAYOUT_CODES[from_order], LAYOUT_CODES[to_order])
    return out


def int8_linear(x, CB, SCB, bias=None, threshold=0.0):
    ops.check_float(x, "x")
    ops.check_matrix(x, "x")
    K = x.shape[-1]
    ops.check_weight(CB, SCB, bias, K)
    ops.check_threshold(threshold)
    ops.check_same_device(x=x, CB=CB, SCB=SCB, bias=bias)
    x, CB, SCB = x.contiguous(), CB.contiguous(), SCB.contiguous()
    M = x.numel() // K if K else int(torch.Size(x.shape[:-1]).numel())
    N = CB.shape[0]
    out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    ws_bytes = C.linear_workspace_size(M, N, K)
    # Scratch comes from torch's caching allocator: no cudaMalloc, safe in graph capture.
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device)
    bias, bias_code, bias_ptr = _bias_arg(bias)
    C.int8_linear(*_exec(x), _DTYPE_CODES[x.dtype], x.data_ptr(), CB.data_ptr(), SCB.data_ptr(),
                  bias_code, bias_ptr, M, N, K, float(threshold), out.data_ptr(), ws.data_ptr(),
                  ws_bytes)
    return out


def int8_weight_linear(x, CB, SCB, bias=None):
    ops.check_float(x, "x")
    ops.check_matrix(x, "x")
    K = x.shape[-1]
    ops.check_weight(CB, SCB, bias, K)
    ops.check_same_device(x=x, CB=CB, SCB=SCB, bias=bias)
    x, CB, SCB = x.contiguous(), CB.contiguous(), SCB.contiguous()
    M, _ = _rows(x)
    N = CB.shape[0]
    out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    bias, bias_code, bias_ptr = _bias_arg(bias)
    C.int8_weight_linear(*_exec(x), _DTYPE_CODES[x.dtype], x.data_ptr(), CB.data_ptr(),
                         SCB.data_ptr(), bias_code, bias_ptr, M, N, K, out.data_ptr())
    return out


def int8_linear_grad_input(grad_out, CB, SCB):
    ops.check_float(grad_out, "grad_out")
    ops.check_dtype(CB, "CB", torch.int8)
    ops.check_dtype(SCB, "SCB", torch.float32)
    N, K = CB.shape
    if grad_out.shape[-1] != N or SCB.shape != (N,):
        raise ValueError(
            f"grad_out's last dimension ({grad_out.shape[-1]}) and SCB {tuple(SCB.shape)} must match "
            f"CB's {N} rows"
        )
    ops.check_same_device(grad_out=grad_out, CB=CB, SCB=SCB)
    grad_out, CB, SCB = grad_out.contiguous(), CB.contiguous(), SCB.contiguous()
    M = grad_out.numel() // N if N else int(torch.Size(grad_out.shape[:-1]).numel())
    grad_x = torch.empty((*grad_out.shape[:-1], K), dtype=grad_out.dtype, device=grad_out.device)
    C.int8_linear_grad_input(*_exec(grad_out), _DTYPE_CODES[grad_out.dtype], grad_out.data_ptr(),
                             CB.data_ptr(), SCB.data_ptr(), M, N, K, grad_x.data_ptr())
    return grad_x


for _name, _fn in [
    ("quantize_rows", quantize_rows),
    ("dequantize_rows", dequantize_rows),
    ("int8_gemm", int8_gemm),
    ("dequant_epilogue", dequant_epilogue),
    ("transform_layout", transform_layout),
    ("int8_linear", int8_linear),
    ("int8_weight_linear", int8_weight_linear),
    ("int8_linear_grad_input", int8_linear_grad_input),
]:
    lib.impl(_name, _fn, "CPU")
    lib.impl(_name, _fn, "CUDA")

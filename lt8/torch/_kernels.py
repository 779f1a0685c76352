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
    cuda_archs,
    has_cuda,
)
from lt8.torch import _ops as ops
from lt8.torch._ops import lib

_DTYPE_CODES = {torch.float32: DTYPE_F32, torch.float16: DTYPE_F16, torch.bfloat16: DTYPE_BF16}

_HAS_CUDA = has_cuda()
_CUDA_READY: set = set()  # device indices whose GPU this build has kernels for (checked once)

# torch's CPU ops run on OpenMP (libgomp) threads, which spin for a while after each op: lt8's
# CPU kernels use the same OpenMP team instead of a second pool that would lose its cores to
# that spinning (cuda/cpu_simd/thread_pool.h; a no-op on builds without OpenMP).
C.use_openmp_threads(True)


def check_cuda_device(device: torch.device) -> None:
    """Raises a clear RuntimeError when this build of lt8 cannot run on the GPU ``device``: no
    CUDA kernels at all, or none old enough for its compute capability (a kernel built for
    sm_XY runs on GPUs of capability >= X.Y only). Checked once per device index."""
    if not _HAS_CUDA:
        raise RuntimeError(
            f"got a tensor on {device} but this lt8 build has no CUDA kernels "
            "(lt8.has_cuda() is False): rebuild lt8 with a CUDA toolkit (LT8_CUDA=ON pip install "
            "--no-build-isolation -e .) or move the tensors to the CPU"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    major, minor = torch.cuda.get_device_capability(index)
    archs = [int("".join(ch for ch in a if ch.isdigit()) or 0) for a in cuda_archs()]
    if archs and major * 10 + minor < min(archs):
        raise RuntimeError(
            f"{device} has compute capability {major}.{minor} but this lt8 build has CUDA kernels "
            f"for sm_{', sm_'.join(cuda_archs())} only: rebuild with LT8_CUDA_ARCHS including "
            f"{major}{minor}"
        )
    _CUDA_READY.add(device.index)


# The raw current-stream getter skips building a torch.cuda.Stream object per call.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream_of(device: torch.device) -> int:
    if _raw_stream is not None:
        return _raw_stream(device.index)
    return torch.cuda.current_stream(device).cuda_stream


def _exec(t: torch.Tensor) -> tuple[int, int, int]:
    """(device code, stream handle, device index) for the tensor's device."""
    if t.device.type == "cuda":
        if t.device.index not in _CUDA_READY:
            check_cuda_device(t.device)
        return DEVICE_CUDA, _stream_of(t.device), t.device.index
    if t.device.type != "cpu":
        raise ValueError(f"lt8 runs on cpu and cuda tensors, got a tensor on {t.device}")
    # The CPU kernels' pool follows torch.set_num_threads (no oversubscription next to torch's).
    C.set_cpu_threads(torch.get_num_threads())
    return DEVICE_CPU, 0, -1


def _rows(x: torch.Tensor) -> tuple[int, int]:
    """(rows, K) of x (..., K): every leading dimension is a batch of rows (K may be 0)."""
    K = x.shape[-1]
    return (x.numel() // K if K else int(torch.Size(x.shape[:-1]).numel())), K


def _bias_arg(bias):
    """(contiguous bias kept alive by the caller, dtype code, pointer); pointer 0 means no bias."""
    if bias is None:
        return None, DTYPE_F32, 0
    bias = bias.contiguous()
    return bias, _DTYPE_CODES[bias.dtype], bias.data_ptr()


# Each kernel validates (the same checks as its fake), makes its inputs contiguous (strided and
# transposed inputs are computed, not rejected) and calls lt8._C.


def quantize_rows(x, threshold=0.0):
    ops.check_quantize_rows(x, threshold)
    x = x.contiguous()
    M, K = _rows(x)
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    row_scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    mask = torch.empty(K, dtype=torch.bool, device=x.device)
    C.quantize_rows(
        *_exec(x),
        _DTYPE_CODES[x.dtype],
        x.data_ptr(),
        M,
        K,
        float(threshold),
        q.data_ptr(),
        row_scale.data_ptr(),
        mask.data_ptr(),
    )
    return q, row_scale, mask


def dequantize_rows(q, row_scale, dtype=torch.float32):
    ops.check_dequantize_rows(q, row_scale, dtype)
    q, row_scale = q.contiguous(), row_scale.contiguous()
    M, K = _rows(q)
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    C.dequantize_rows(
        *_exec(q), q.data_ptr(), row_scale.data_ptr(), M, K, _DTYPE_CODES[dtype], out.data_ptr()
    )
    return out


def int8_gemm(A, B):
    ops.check_int8_gemm(A, B)
    A, B = A.contiguous(), B.contiguous()
    M, K = _rows(A)
    N = B.shape[0]
    out = torch.empty((*A.shape[:-1], N), dtype=torch.int32, device=A.device)
    C.int8_gemm(*_exec(A), A.data_ptr(), B.data_ptr(), M, N, K, out.data_ptr())
    return out


def dequant_epilogue(C_, row_scale, col_scale, bias=None, dtype=torch.float16):
    ops.check_dequant_epilogue(C_, row_scale, col_scale, bias, dtype)
    M, N = _rows(C_)
    C_, row_scale, col_scale = C_.contiguous(), row_scale.contiguous(), col_scale.contiguous()
    bias, bias_code, bias_ptr = _bias_arg(bias)
    out = torch.empty(C_.shape, dtype=dtype, device=C_.device)
    C.dequant_epilogue(
        *_exec(C_),
        C_.data_ptr(),
        row_scale.data_ptr(),
        col_scale.data_ptr(),
        bias_code,
        bias_ptr,
        M,
        N,
        _DTYPE_CODES[dtype],
        out.data_ptr(),
    )
    return out


def transform_layout(x, rows, cols, from_order, to_order):
    ops.check_transform_layout(x, rows, cols, from_order, to_order)
    x = x.contiguous()
    out = torch.empty(ops.padded_shape(to_order, rows, cols), dtype=torch.int8, device=x.device)
    C.transform_layout(
        *_exec(x),
        x.data_ptr(),
        out.data_ptr(),
        rows,
        cols,
        LAYOUT_CODES[from_order],
        LAYOUT_CODES[to_order],
    )
    return out


def int8_linear(x, CB, SCB, bias=None, threshold=0.0):
    ops.check_linear(x, CB, SCB, bias, threshold)
    x, CB, SCB = x.contiguous(), CB.contiguous(), SCB.contiguous()
    M, K = _rows(x)
    N = CB.shape[0]
    out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    ex = _exec(x)
    ws_bytes = C.linear_workspace_size(M, N, K, _DTYPE_CODES[x.dtype], float(threshold), ex[0])
    # Scratch comes from torch's caching allocator: no cudaMalloc, safe in graph capture.
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device)
    bias, bias_code, bias_ptr = _bias_arg(bias)
    C.int8_linear(
        *ex,
        _DTYPE_CODES[x.dtype],
        x.data_ptr(),
        CB.data_ptr(),
        SCB.data_ptr(),
        bias_code,
        bias_ptr,
        M,
        N,
        K,
        float(threshold),
        out.data_ptr(),
        ws.data_ptr(),
        ws_bytes,
    )
    return out


def int8_weight_linear(x, CB, SCB, bias=None):
    ops.check_weight_linear(x, CB, SCB, bias)
    x, CB, SCB = x.contiguous(), CB.contiguous(), SCB.contiguous()
    M, K = _rows(x)
    N = CB.shape[0]
    out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    bias, bias_code, bias_ptr = _bias_arg(bias)
    C.int8_weight_linear(
        *_exec(x),
        _DTYPE_CODES[x.dtype],
        x.data_ptr(),
        CB.data_ptr(),
        SCB.data_ptr(),
        bias_code,
        bias_ptr,
        M,
        N,
        K,
        out.data_ptr(),
    )
    return out


def int8_linear_grad_input(grad_out, CB, SCB):
    ops.check_grad_input(grad_out, CB, SCB)
    grad_out, CB, SCB = grad_out.contiguous(), CB.contiguous(), SCB.contiguous()
    M, N = _rows(grad_out)
    K = CB.shape[1]
    grad_x = torch.empty((*grad_out.shape[:-1], K), dtype=grad_out.dtype, device=grad_out.device)
    C.int8_linear_grad_input(
        *_exec(grad_out),
        _DTYPE_CODES[grad_out.dtype],
        grad_out.data_ptr(),
        CB.data_ptr(),
        SCB.data_ptr(),
        M,
        N,
        K,
        grad_x.data_ptr(),
    )
    return grad_x


def add_outlier_terms(x, outlier_mask, CB, SCB, base):
    ops.check_add_outlier_terms(x, outlier_mask, CB, SCB, base)
    x, CB, SCB, base = x.contiguous(), CB.contiguous(), SCB.contiguous(), base.contiguous()
    mask = outlier_mask.contiguous().view(torch.uint8)
    M, K = _rows(x)
    N = CB.shape[0]
    out = torch.empty_like(base)
    ex = _exec(x)
    # Gather scratch of the tensor-core path (16-bit x on a GPU), from torch's caching allocator.
    ws_bytes = C.outlier_terms_workspace_size(M, N, K, _DTYPE_CODES[x.dtype], ex[0])
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device)
    C.add_outlier_terms(
        *ex,
        _DTYPE_CODES[x.dtype],
        x.data_ptr(),
        mask.data_ptr(),
        CB.data_ptr(),
        SCB.data_ptr(),
        base.data_ptr(),
        M,
        N,
        K,
        out.data_ptr(),
        ws.data_ptr(),
        ws_bytes,
    )
    return out


# One CPU and one CUDA kernel per op of cuda/ops.def (lt8._C.ops()): the function of that name.
for _name in C.ops():
    if _name not in globals():
        raise ImportError(f"lt8.torch._kernels has no kernel for op {_name!r} of cuda/ops.def")
    lib.impl(_name, globals()[_name], "CPU")
    lib.impl(_name, globals()[_name], "CUDA")

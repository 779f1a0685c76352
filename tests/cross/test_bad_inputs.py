"""Every public entry point, torch and JAX, either computes the right thing or raises a clear
error (type and message naming the argument and what was expected): wrong dtypes, mismatched
shapes, scalars, bad thresholds, tensors on different devices, CUDA tensors on a build without
CUDA kernels. And what must be computed, not rejected: strided and non-contiguous inputs, empty
batches, 3-D/4-D inputs, sizes that are no multiple of 4/8/16/32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import require_cuda
from jax_helpers import platform  # noqa: F401
from reference import grad_input_ref, linear_error_bound, linear_ref, weight_linear_ref

import lt8
import lt8.jax as lj
import lt8.torch  # noqa: F401  (registers torch.ops.lt8)
from lt8 import functional as F
from lt8.jax.nnx import Linear8bit
from lt8.torch import _kernels

NAN = float("nan")
I8, F32, F16, F64, I32 = torch.int8, torch.float32, torch.float16, torch.float64, torch.int32
OPS = torch.ops.lt8


# --- torch: a table of bad calls -------------------------------------------------------------------


def _t(shape, dtype=F32, d="cpu"):
    return torch.zeros(shape, dtype=dtype, device=d)


def _w(d="cpu", N=4, K=8):
    """(CB, SCB) of a valid (N, K) int8 weight."""
    return torch.zeros(N, K, dtype=I8, device=d), torch.ones(N, device=d)


def _module(d, has_fp16_weights=False, threshold=6.0, K=8, N=4):
    layer = lt8.nn.Linear8bitLt(K, N, has_fp16_weights=has_fp16_weights, threshold=threshold)
    return layer.to(d)


TORCH_BAD = {
    # ops: int8_linear
    "linear x int8": (
        lambda d: OPS.int8_linear(_t((2, 8), I8, d), *_w(d), None, 6.0),
        TypeError,
        r"x must be float32, float16 or bfloat16, got torch\.int8",
    ),
    "linear x float64": (
        lambda d: OPS.int8_linear(_t((2, 8), F64, d), *_w(d), None, 6.0),
        TypeError,
        r"x must be .*got torch\.float64",
    ),
    "linear x scalar": (
        lambda d: OPS.int8_linear(_t((), F32, d), *_w(d), None, 6.0),
        ValueError,
        r"x must have at least one dimension",
    ),
    "linear K mismatch": (
        lambda d: OPS.int8_linear(_t((2, 7), F32, d), *_w(d), None, 6.0),
        ValueError,
        r"x has 7 features but CB expects 8",
    ),
    "linear CB float": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), _t((4, 8), F32, d), _w(d)[1], None, 6.0),
        TypeError,
        r"CB must be torch\.int8, got torch\.float32",
    ),
    "linear CB 1-D": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), _t((8,), I8, d), _w(d)[1], None, 6.0),
        ValueError,
        r"CB must be 2-D \(out_features, in_features\), got shape \(8,\)",
    ),
    "linear CB 3-D": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), _t((1, 4, 8), I8, d), _w(d)[1], None, 6.0),
        ValueError,
        r"CB must be 2-D",
    ),
    "linear SCB float64": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), _w(d)[0], _t((4,), F64, d), None, 6.0),
        TypeError,
        r"SCB must be torch\.float32, got torch\.float64",
    ),
    "linear SCB shape": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), _w(d)[0], _t((3,), F32, d), None, 6.0),
        ValueError,
        r"SCB must have shape \(4,\)",
    ),
    "linear SCB 2-D": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), _w(d)[0], _t((1, 4), F32, d), None, 6.0),
        ValueError,
        r"SCB must have shape \(4,\).*got \(1, 4\)",
    ),
    "linear bias int": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), *_w(d), _t((4,), I32, d), 6.0),
        TypeError,
        r"bias must be float32, float16 or bfloat16, got torch\.int32",
    ),
    "linear bias float64": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), *_w(d), _t((4,), F64, d), 6.0),
        TypeError,
        r"bias must be .*float64",
    ),
    "linear bias shape": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), *_w(d), _t((5,), F32, d), 6.0),
        ValueError,
        r"bias must have shape \(4,\), got \(5,\)",
    ),
    "linear threshold < 0": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), *_w(d), None, -1.0),
        ValueError,
        r"threshold must be a number >= 0",
    ),
    "linear threshold NaN": (
        lambda d: OPS.int8_linear(_t((2, 8), F32, d), *_w(d), None, NAN),
        ValueError,
        r"threshold must be a number >= 0.*nan",
    ),
    # ops: the others
    "weight_linear x int8": (
        lambda d: OPS.int8_weight_linear(_t((2, 8), I8, d), *_w(d), None),
        TypeError,
        r"x must be float32",
    ),
    "weight_linear K mismatch": (
        lambda d: OPS.int8_weight_linear(_t((2, 9), F32, d), *_w(d), None),
        ValueError,
        r"x has 9 features but CB expects 8",
    ),
    "grad_input grad int": (
        lambda d: OPS.int8_linear_grad_input(_t((2, 4), I32, d), *_w(d)),
        TypeError,
        r"grad_out must be float32",
    ),
    "grad_input grad scalar": (
        lambda d: OPS.int8_linear_grad_input(_t((), F32, d), *_w(d)),
        ValueError,
        r"grad_out must have at least one dimension",
    ),
    "grad_input CB 1-D": (
        lambda d: OPS.int8_linear_grad_input(_t((2, 4), F32, d), _t((8,), I8, d), _w(d)[1]),
        ValueError,
        r"CB must be 2-D",
    ),
    "grad_input N mismatch": (
        lambda d: OPS.int8_linear_grad_input(_t((2, 5), F32, d), *_w(d)),
        ValueError,
        r"grad_out has 5 features but CB has 4 rows",
    ),
    "grad_input SCB shape": (
        lambda d: OPS.int8_linear_grad_input(_t((2, 4), F32, d), _w(d)[0], _t((5,), F32, d)),
        ValueError,
        r"SCB must have shape \(4,\)",
    ),
    "quantize x int8": (
        lambda d: OPS.quantize_rows(_t((2, 8), I8, d), 0.0),
        TypeError,
        r"x must be float32",
    ),
    "quantize x scalar": (
        lambda d: OPS.quantize_rows(_t((), F32, d), 0.0),
        ValueError,
        r"at least one dimension",
    ),
    "quantize threshold NaN": (
        lambda d: OPS.quantize_rows(_t((2, 8), F32, d), NAN),
        ValueError,
        r"threshold",
    ),
    "dequantize q float": (
        lambda d: OPS.dequantize_rows(_t((2, 8), F32, d), _t((2,), F32, d), F32),
        TypeError,
        r"q must be torch\.int8",
    ),
    "dequantize q scalar": (
        lambda d: OPS.dequantize_rows(_t((), I8, d), _t((), F32, d), F32),
        ValueError,
        r"q must have at least one dimension",
    ),
    "dequantize row_scale shape": (
        lambda d: OPS.dequantize_rows(_t((2, 8), I8, d), _t((3,), F32, d), F32),
        ValueError,
        r"row_scale must have shape q\.shape\[:-1\] = \(2,\), got \(3,\)",
    ),
    "dequantize dtype int8": (
        lambda d: OPS.dequantize_rows(_t((2, 8), I8, d), _t((2,), F32, d), I8),
        TypeError,
        r"dtype must be float32, float16 or bfloat16, got torch\.int8",
    ),
    "gemm A float": (
        lambda d: OPS.int8_gemm(_t((2, 8), F32, d), _w(d)[0]),
        TypeError,
        r"A must be torch\.int8",
    ),
    "gemm A scalar": (
        lambda d: OPS.int8_gemm(_t((), I8, d), _w(d)[0]),
        ValueError,
        r"A must have at least one",
    ),
    "gemm B shape": (
        lambda d: OPS.int8_gemm(_t((2, 8), I8, d), _t((4, 7), I8, d)),
        ValueError,
        r"B must have shape \(N, 8\)",
    ),
    "epilogue C int8": (
        lambda d: OPS.dequant_epilogue(
            _t((2, 4), I8, d), _t((2,), F32, d), _t((4,), F32, d), None, F16
        ),
        TypeError,
        r"C must be torch\.int32",
    ),
    "epilogue row_scale shape": (
        lambda d: OPS.dequant_epilogue(
            _t((2, 4), I32, d), _t((1, 2), F32, d), _t((4,), F32, d), None, F16
        ),
        ValueError,
        r"row_scale must have shape C\.shape\[:-1\] = \(2,\)",
    ),
    "epilogue col_scale shape": (
        lambda d: OPS.dequant_epilogue(
            _t((2, 4), I32, d), _t((2,), F32, d), _t((3,), F32, d), None, F16
        ),
        ValueError,
        r"col_scale must have shape \(4,\)",
    ),
    "epilogue bias shape": (
        lambda d: OPS.dequant_epilogue(
            _t((2, 4), I32, d), _t((2,), F32, d), _t((4,), F32, d), _t((2,), F32, d), F16
        ),
        ValueError,
        r"bias must have shape \(4,\)",
    ),
    "epilogue dtype": (
        lambda d: OPS.dequant_epilogue(
            _t((2, 4), I32, d), _t((2,), F32, d), _t((4,), F32, d), None, I32
        ),
        TypeError,
        r"dtype must be float32",
    ),
    "transform x float": (
        lambda d: OPS.transform_layout(_t((4, 8), F32, d), 4, 8, "row", "col32"),
        TypeError,
        r"x must be torch\.int8",
    ),
    "transform order": (
        lambda d: OPS.transform_layout(_t((4, 8), I8, d), 4, 8, "row", "col64"),
        ValueError,
        r"to_order must be one of \['col32', 'col_ampere', 'col_turing', 'row'\], got 'col64'",
    ),
    "transform negative": (
        lambda d: OPS.transform_layout(_t((4, 8), I8, d), -4, 8, "row", "col32"),
        ValueError,
        r"rows and cols must be >= 0",
    ),
    "transform size": (
        lambda d: OPS.transform_layout(_t((4, 8), I8, d), 4, 8, "col32", "row"),
        ValueError,
        r"x has 32 elements but a col32 matrix of logical shape \(4, 8\) has 128",
    ),
    # lt8.functional
    "F.int8_vectorwise_quant A int8": (
        lambda d: F.int8_vectorwise_quant(_t((2, 8), I8, d)),
        TypeError,
        r"A must be float32",
    ),
    "F.int8_vectorwise_quant threshold str": (
        lambda d: F.int8_vectorwise_quant(_t((2, 8), F32, d), "6"),
        TypeError,
        r"threshold must be a number >= 0.*'6'",
    ),
    "F.int8_vectorwise_quant threshold < 0": (
        lambda d: F.int8_vectorwise_quant(_t((2, 8), F32, d), -0.5),
        ValueError,
        r"threshold must be a number >= 0",
    ),
    "F.int8_vectorwise_dequant A float": (
        lambda d: F.int8_vectorwise_dequant(_t((2, 8), F32, d), _t((2,), F32, d)),
        TypeError,
        r"A must be torch\.int8",
    ),
    "F.int8_vectorwise_dequant stats f16": (
        lambda d: F.int8_vectorwise_dequant(_t((2, 8), I8, d), _t((2,), F16, d)),
        TypeError,
        r"stats must be torch\.float32",
    ),
    "F.int8_linear_matmul dtype": (
        lambda d: F.int8_linear_matmul(*[_w(d)[0]] * 2, dtype=F32),
        ValueError,
        r"dtype must be torch\.int32",
    ),
    "F.int8_mm_dequant A int8": (
        lambda d: F.int8_mm_dequant(_t((2, 4), I8, d), _t((2,), F32, d), _t((4,), F32, d)),
        TypeError,
        r"A must be torch\.int32",
    ),
    "F.int8_mm_dequant col_stats f16": (
        lambda d: F.int8_mm_dequant(_t((2, 4), I32, d), _t((2,), F32, d), _t((4,), F16, d)),
        TypeError,
        r"col_stats must be",
    ),
    "F.double_quant 3-D": (
        lambda d: F.double_quant(_t((1, 2, 8), F32, d)),
        ValueError,
        r"A must be 2-D",
    ),
    "F.double_quant A int": (
        lambda d: F.double_quant(_t((2, 8), I32, d)),
        TypeError,
        r"A must be float32",
    ),
    "F.transform scalar": (
        lambda d: F.transform(_t((), I8, d), "col32"),
        ValueError,
        r"A must be an int8 matrix",
    ),
    "F.transform no state": (
        lambda d: F.transform(_t((8, 32), I8, d), "row", from_order="col32"),
        ValueError,
        r"needs state=\(shape, order\)",
    ),
    "F.quantize_weight float64": (
        lambda d: F.quantize_weight(_t((4, 8), F64, d)),
        TypeError,
        r"W must be float32, float16 or bfloat16, got torch\.float64",
    ),
    "F.quantize_weight 1-D": (
        lambda d: F.quantize_weight(_t((8,), F32, d)),
        ValueError,
        r"W must be 2-D",
    ),
    "F.int8_linear threshold None": (
        lambda d: F.int8_linear(_t((2, 8), F32, d), *_w(d), None, None),
        TypeError,
        r"threshold must be a number",
    ),
    # lt8.autograd.matmul
    "matmul threshold < 0": (
        lambda d: lt8.autograd.matmul(_t((2, 8), F32, d), _t((4, 8), F32, d), threshold=-1.0),
        ValueError,
        r"threshold must be a number >= 0",
    ),
    "matmul threshold NaN": (
        lambda d: lt8.autograd.matmul(_t((2, 8), F32, d), _t((4, 8), F32, d), threshold=NAN),
        ValueError,
        r"threshold",
    ),
    "matmul A int": (
        lambda d: lt8.autograd.matmul(_t((2, 8), I32, d), _t((4, 8), F32, d)),
        TypeError,
        r"A must be float32",
    ),
    "matmul B int32": (
        lambda d: lt8.autograd.matmul(_t((2, 8), F32, d), _t((4, 8), I32, d)),
        TypeError,
        r"B must be float32, float16 or bfloat16, got torch\.int32",
    ),
    "matmul B 1-D": (
        lambda d: lt8.autograd.matmul(_t((2, 8), F32, d), _t((8,), F32, d)),
        ValueError,
        r"B must be 2-D \(out_features, in_features\)",
    ),
    "matmul K mismatch": (
        lambda d: lt8.autograd.matmul(_t((2, 8), F32, d), _t((4, 7), F32, d)),
        ValueError,
        r"A has 8 features but B expects 7",
    ),
    "matmul int8 B without SCB": (
        lambda d: lt8.autograd.matmul(
            _t((2, 8), F32, d), _w(d)[0], state=lt8.autograd.MatmulLtState(has_fp16_weights=False)
        ),
        ValueError,
        r"an int8 weight needs its scales",
    ),
    # lt8.nn
    "Linear8bitLt threshold < 0": (
        lambda d: lt8.nn.Linear8bitLt(8, 4, threshold=-1.0),
        ValueError,
        r"threshold must be a number >= 0",
    ),
    "Linear8bitLt threshold NaN": (
        lambda d: lt8.nn.Linear8bitLt(8, 4, threshold=NAN),
        ValueError,
        r"threshold",
    ),
    "Linear8bitLt threshold str": (
        lambda d: lt8.nn.Linear8bitLt(8, 4, threshold="6"),
        TypeError,
        r"threshold must be a number",
    ),
    "Linear8bitLt x int8": (
        lambda d: _module(d)(_t((2, 8), I8, d)),
        TypeError,
        r"x must be float32.*torch\.int8",
    ),
    "Linear8bitLt x float64": (
        lambda d: _module(d)(_t((2, 8), F64, d)),
        TypeError,
        r"x must be float32",
    ),
    "Linear8bitLt K mismatch": (
        lambda d: _module(d)(_t((2, 9), F32, d)),
        ValueError,
        r"x has 9 features but CB expects 8",
    ),
    "Linear8bitLt x scalar": (
        lambda d: _module(d)(_t((), F32, d)),
        ValueError,
        r"x must have at least one dimension",
    ),
    "Linear8bitLt fp16 weights x int": (
        lambda d: _module(d, True)(_t((2, 8), I32, d)),
        TypeError,
        r"x must be float32",
    ),
    "Linear8bitLt fp16 weights K mismatch": (
        lambda d: _module(d, True)(_t((2, 9), F32, d)),
        ValueError,
        r"x has 9 features but weight expects 8",
    ),
    "Int8Params int32 data": (
        lambda d: lt8.nn.Int8Params(_t((4, 8), I32), requires_grad=False).to(d),
        TypeError,
        r"weight must be a floating-point weight to quantize.*torch\.int32",
    ),
}


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", list(TORCH_BAD))
def test_torch_bad_input_raises_clear_error(device, case, grad):
    call, exc, match = TORCH_BAD[case]
    with torch.set_grad_enabled(grad), pytest.raises(exc, match=match):
        call(device)


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in TORCH_BAD
        if c.split()[0]
        in (
            "linear",
            "weight_linear",
            "grad_input",
            "quantize",
            "dequantize",
            "gemm",
            "epilogue",
            "transform",
        )
    ],
)
def test_torch_fake_kernels_raise_the_same_errors(case):
    """On meta tensors (what torch.compile traces with) the op raises what the real kernel does."""
    call, exc, match = TORCH_BAD[case]
    with pytest.raises(exc, match=match):
        call("meta")


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_module_threshold_set_later_is_checked(device, grad):
    layer = _module(device)
    for bad in (-1.0, NAN):
        layer.state.threshold = bad
        with (
            torch.set_grad_enabled(grad),
            pytest.raises(ValueError, match="threshold must be a number >= 0"),
        ):
            layer(torch.zeros(2, 8, device=device, requires_grad=grad))


def test_float64_weights_are_quantized_as_float32(device, rng):
    """A float64 weight (a model in double precision) quantizes to what its float32 rounding
    gives: the int8 rows and float32 scales keep less than float32 does anyway."""
    W = torch.from_numpy(rng.standard_normal((12, 20)))
    p = lt8.nn.Int8Params(W.clone(), requires_grad=False).to(device)
    CB, SCB, _ = OPS.quantize_rows(W.float().to(device), 0.0)
    assert torch.equal(p.data, CB) and torch.equal(p.SCB, SCB)
    layer = lt8.nn.Linear8bitLt(20, 12, has_fp16_weights=True, threshold=6.0).to(device).double()
    layer.bias = None
    x = torch.randn(3, 20, device=device, requires_grad=True)
    out = layer(x)
    CBd, SCBd, _ = OPS.quantize_rows(layer.weight.detach().float(), 0.0)
    assert torch.equal(out, OPS.int8_linear(x.detach(), CBd, SCBd, None, 6.0))
    out.sum().backward()
    assert layer.weight.grad.dtype == torch.float64
    torch.testing.assert_close(x.grad, layer.weight.detach().float().sum(0).expand(3, 20))


# --- torch: devices --------------------------------------------------------------------------------


def test_torch_mixed_devices_are_a_clear_error(rng):
    require_cuda()
    x = torch.randn(2, 8, device="cuda")
    CB, SCB = _w("cpu")
    for call in (
        lambda: OPS.int8_linear(x, CB, SCB, None, 6.0),
        lambda: OPS.int8_weight_linear(x, CB, SCB, None),
        lambda: OPS.int8_linear_grad_input(torch.randn(2, 4, device="cuda"), CB, SCB),
        lambda: OPS.int8_linear(x, CB.cuda(), SCB, None, 6.0),
        lambda: OPS.int8_linear(x, CB.cuda(), SCB.cuda(), torch.zeros(4), 6.0),
        lambda: OPS.int8_gemm(CB.cuda(), CB),
        lambda: OPS.dequantize_rows(CB.cuda(), SCB, F32),
        lambda: _module("cpu")(x),
    ):
        with pytest.raises(ValueError, match=r"is on .* but .* is on .*move them to one device"):
            call()
    with torch.no_grad(), pytest.raises(ValueError, match="move them to one device"):
        _module("cpu")(x)  # the inference fast path checks too


def test_cuda_tensor_without_cuda_kernels_is_a_clear_error(monkeypatch):
    """The Python check that runs before any CUDA launch: a build without CUDA kernels, or one
    whose kernels are all for newer GPUs, says so (checked with a stand-in for a CUDA tensor)."""

    class CudaTensor:  # what _exec looks at; a CPU-only torch cannot make a real one
        device = torch.device("cuda", 0)

    monkeypatch.setattr(_kernels, "_CUDA_READY", set())
    monkeypatch.setattr(_kernels, "_HAS_CUDA", False)
    with pytest.raises(
        RuntimeError, match=r"cuda:0 but this lt8 build has no CUDA kernels.*LT8_CUDA=ON"
    ):
        _kernels._exec(CudaTensor())
    monkeypatch.setattr(_kernels, "_HAS_CUDA", True)
    monkeypatch.setattr(_kernels, "cuda_archs", lambda: ["80", "90"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    with pytest.raises(
        RuntimeError,
        match=r"compute capability 7\.5 but this lt8 build has CUDA kernels for "
        r"sm_80, sm_90 only",
    ):
        _kernels._exec(CudaTensor())
    assert 0 not in _kernels._CUDA_READY


def test_native_cuda_call_without_cuda_kernels_is_a_clear_error():
    """lt8._C itself refuses a CUDA launch in a build without CUDA kernels (an empty call: no
    memory is touched)."""
    if lt8.has_cuda():
        pytest.skip("this build has CUDA kernels")
    from lt8._native import DEVICE_CUDA, C

    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        C.int8_gemm(DEVICE_CUDA, 0, -1, 0, 0, 0, 0, 0, 0)


def test_real_cuda_tensor_on_a_build_without_cuda_kernels():
    if not torch.cuda.is_available() or lt8.has_cuda():
        pytest.skip("needs a CUDA GPU and an lt8 build without CUDA kernels")
    x = torch.randn(2, 8, device="cuda")
    CB, SCB = _w("cuda")
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        OPS.int8_linear(x, CB, SCB, None, 6.0)
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        lt8.nn.Int8Params(torch.randn(4, 8), requires_grad=False).cuda()


# --- torch: what is computed, not rejected ---------------------------------------------------------


def _strided_variants(x: torch.Tensor):
    """Views of the same values with other strides: transposed twice, a step slice of a wider
    tensor, a storage offset, a broadcast (stride 0) row."""
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    padded = torch.zeros(x.numel() + 3, dtype=x.dtype, device=x.device)
    padded[3:] = x.reshape(-1)
    if x.dim() >= 2:
        yield "transposed", x.transpose(-1, -2).contiguous().transpose(-1, -2)
    yield "step", wide[..., ::2]
    yield "offset", padded[3:].view(x.shape)
    if x.shape[0]:
        yield "broadcast", x[:1].expand(x.shape)


def test_torch_strided_inputs_are_computed(device, rng):
    """Every op gives the same bits for a strided or non-contiguous input as for its contiguous
    copy (weights, scales and bias too)."""
    M, K, N = 6, 40, 12
    x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32)).half().to(device)
    x[0, 5] = 9.0
    W = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32)).to(device)
    CB, SCB, _ = OPS.quantize_rows(W, 0.0)
    bias = torch.randn(N, device=device)
    g = torch.randn(M, N, device=device).half()
    calls = {
        "linear": lambda x, CB, SCB, b, g: OPS.int8_linear(x, CB, SCB, b, 6.0),
        "weight_linear": lambda x, CB, SCB, b, g: OPS.int8_weight_linear(x, CB, SCB, b),
        "grad_input": lambda x, CB, SCB, b, g: OPS.int8_linear_grad_input(g, CB, SCB),
        "quantize": lambda x, CB, SCB, b, g: OPS.quantize_rows(x, 6.0),
        "dequantize": lambda x, CB, SCB, b, g: OPS.dequantize_rows(CB, SCB, F16),
        "gemm": lambda x, CB, SCB, b, g: OPS.int8_gemm(CB, CB),
        "epilogue": lambda x, CB, SCB, b, g: OPS.dequant_epilogue(
            OPS.int8_gemm(CB, CB), SCB, SCB, b, F16
        ),
        "transform": lambda x, CB, SCB, b, g: OPS.transform_layout(CB, N, K, "row", "col_turing"),
    }
    args = dict(x=x, CB=CB, SCB=SCB, b=bias, g=g)
    for name, call in calls.items():
        expected = call(**args)
        for arg in args:
            for how, view in _strided_variants(args[arg]):
                if how == "broadcast" and arg != "x":
                    continue  # a broadcast weight is a different weight
                got = call(**{**args, arg: view})
                exp = expected if how != "broadcast" else call(**{**args, arg: view.contiguous()})
                for a, b in zip(
                    got if isinstance(got, tuple) else (got,),
                    exp if isinstance(exp, tuple) else (exp,),
                ):
                    assert torch.equal(a, b), (name, arg, how)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_torch_module_strided_input(device, rng, grad):
    layer = _module(device, K=40, N=12)
    x = torch.from_numpy(rng.standard_normal((6, 40)).astype(np.float32)).to(device)
    with torch.set_grad_enabled(grad):
        expected = layer(x.clone().requires_grad_(grad))
        for how, view in _strided_variants(x):
            view = view.detach().requires_grad_(grad) if grad else view
            exp = expected if how != "broadcast" else layer(view.contiguous())
            assert torch.equal(layer(view), exp), how


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16), (0, 3, 16), (16,)], ids=str)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_torch_empty_and_small_batches(device, rng, shape, threshold):
    """M = 0 gives an empty result of the right shape in every op, forward and backward; 1-D x
    is one row."""
    K, N = shape[-1], 5
    x = (
        torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        .to(device)
        .requires_grad_(True)
    )
    CB, SCB, _ = OPS.quantize_rows(torch.randn(N, K, device=device), 0.0)
    bias = torch.randn(N, device=device, requires_grad=True)
    out = OPS.int8_linear(x, CB, SCB, bias, threshold)
    assert out.shape == (*shape[:-1], N)
    out.sum().backward()
    assert x.grad.shape == x.shape and bias.grad.shape == (N,)
    xn, cb, scb = x.detach().cpu().numpy(), CB.cpu().numpy(), SCB.cpu().numpy()
    ref = linear_ref(xn, cb, scb, bias.detach().cpu().numpy(), threshold)
    q = OPS.quantize_rows(x.detach(), threshold)[0].cpu().numpy()
    assert np.all(
        np.abs(out.detach().cpu().numpy() - ref)
        <= linear_error_bound(xn, cb, scb, ref, 2.0**-24, 0, threshold, q)
    )
    np.testing.assert_allclose(bias.grad.cpu().numpy(), np.full(N, np.prod(shape[:-1])))
    assert OPS.int8_weight_linear(x.detach(), CB, SCB, None).shape == out.shape
    q, scale, mask = OPS.quantize_rows(x.detach(), threshold)
    assert q.shape == x.shape and scale.shape == shape[:-1] and mask.shape == (K,)
    assert OPS.dequantize_rows(q, scale, F16).shape == x.shape
    assert OPS.int8_gemm(q, CB).shape == out.shape
    for has_fp16_weights in (False, True):
        layer = _module(device, has_fp16_weights, threshold, K=K, N=N)
        y = layer(x)
        assert y.shape == out.shape
        y.sum().backward()
        with torch.no_grad():
            assert layer(x).shape == out.shape


SIZES = [(1, 1), (3, 33), (33, 3), (4097, 1), (1, 4097), (33, 4097)]


@pytest.mark.parametrize("K,N", SIZES, ids=[f"K{k}-N{n}" for k, n in SIZES])
@pytest.mark.parametrize("M", [1, 3, 33])
def test_torch_sizes_that_are_no_multiple_of_the_tile(device, rng, K, N, M):
    """K and N of 1, 3, 33, 4097 (no multiple of 4/8/16/32): every path against the reference."""
    x = torch.from_numpy(np.clip(rng.standard_normal((M, K)), -4, 4).astype(np.float32)).to(device)
    x[0, K // 2] = 10.0
    W = rng.standard_normal((N, K)).astype(np.float32)
    CB, SCB, _ = OPS.quantize_rows(torch.from_numpy(W).to(device), 0.0)
    cb, scb = CB.cpu().numpy(), SCB.cpu().numpy()
    q, _, _ = OPS.quantize_rows(x, 6.0)
    out = OPS.int8_linear(x, CB, SCB, None, 6.0).cpu().numpy().astype(np.float64)
    ref = linear_ref(x.cpu().numpy(), cb, scb, None, 6.0)
    assert np.all(
        np.abs(out - ref)
        <= linear_error_bound(
            x.cpu().numpy(), cb, scb, ref, 2.0**-24, 2.0**-149, 6.0, q.cpu().numpy()
        )
    )
    out_w = OPS.int8_weight_linear(x, CB, SCB, None).cpu().numpy()
    ref_w = weight_linear_ref(x.cpu().numpy(), cb, scb)
    assert np.all(
        np.abs(out_w - ref_w)
        <= linear_error_bound(x.cpu().numpy(), cb, scb, ref_w, 2.0**-24, 2.0**-149)
    )
    g = torch.randn(M, N, device=device)
    gx = OPS.int8_linear_grad_input(g, CB, SCB).cpu().numpy()
    ref_g = grad_input_ref(g.cpu().numpy(), cb, scb)
    S = np.abs(g.cpu().numpy()) @ np.abs(cb * scb[:, None].astype(np.float64) / 127)
    assert np.all(np.abs(gx - ref_g) <= (N + 4) * 2.0**-23 * S + 2.0**-23 * np.abs(ref_g))
    for order in ("col32", "col_turing", "col_ampere"):
        tiled = OPS.transform_layout(CB, N, K, "row", order)
        assert torch.equal(OPS.transform_layout(tiled, N, K, order, "row"), CB)


@pytest.mark.parametrize("shape", [(2, 3, 24), (2, 1, 3, 24), (1, 1, 1, 24)], ids=str)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_torch_3d_and_4d_inputs(device, rng, shape, grad):
    """Leading dimensions are rows: a 3-D/4-D call gives bit for bit its flattened 2-D call,
    outlier columns included (they are found over all leading dimensions)."""
    layer = _module(device, K=24, N=10)
    x = (
        torch.from_numpy(np.clip(rng.standard_normal(shape), -3, 3).astype(np.float32))
        .half()
        .to(device)
    )
    x.view(-1, 24)[-1, 4] = 12.0
    with torch.set_grad_enabled(grad):
        xs = x.clone().requires_grad_(grad)
        out = layer(xs)
        flat = layer(x.reshape(-1, 24))
    assert out.shape == (*shape[:-1], 10)
    assert torch.equal(out.reshape(-1, 10), flat)
    x64 = x.cpu().double().numpy()
    cb, scb = layer.weight.cpu().numpy(), layer.weight.SCB.cpu().numpy()
    ref = linear_ref(x64, cb, scb, layer.bias.detach().cpu().numpy(), 6.0)
    q = OPS.quantize_rows(x, 6.0)[0].cpu().numpy()  # must equal the reference's int8 rows
    bound = linear_error_bound(x64, cb, scb, ref, 2.0**-11, 2.0**-25, 6.0, q)
    assert np.all(np.abs(out.detach().cpu().double().numpy() - ref) <= bound)
    if grad:
        out.sum().backward()
        assert xs.grad.shape == shape


# --- JAX: a table of bad calls ----------------------------------------------------------------------


def _jw(N=4, K=8):
    return jnp.zeros((N, K), jnp.int8), jnp.ones(N, jnp.float32)


def _jx(shape=(2, 8), dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def _dense(**kw):
    layer = lj.Dense8bit(4, **kw)
    return layer, layer.init(jax.random.key(0), _jx())


JAX_BAD = {
    "linear x int8": (
        lambda: lj.linear(_jx(dtype=jnp.int8), *_jw()),
        TypeError,
        r"x must be float32, float16 or bfloat16, got int8",
    ),
    "linear x scalar": (
        lambda: lj.linear(_jx(()), *_jw()),
        ValueError,
        r"x must have at least one dimension",
    ),
    "linear K mismatch": (
        lambda: lj.linear(_jx((2, 7)), *_jw()),
        ValueError,
        r"x has 7 features but CB expects 8",
    ),
    "linear CB float": (
        lambda: lj.linear(_jx(), _jx((4, 8)), _jw()[1]),
        TypeError,
        r"CB must be int8, got float32",
    ),
    "linear CB 1-D": (
        lambda: lj.linear(_jx(), _jw()[0][0], _jw()[1]),
        ValueError,
        r"CB must be 2-D",
    ),
    "linear CB None": (
        lambda: lj.linear(_jx(), None, _jw()[1]),
        TypeError,
        r"CB must be an array, got None",
    ),
    "linear SCB float16": (
        lambda: lj.linear(_jx(), _jw()[0], _jw()[1].astype(jnp.float16)),
        TypeError,
        r"SCB must be float32, got float16",
    ),
    "linear SCB shape": (
        lambda: lj.linear(_jx(), _jw()[0], jnp.ones(3)),
        ValueError,
        r"SCB must have shape \(4,\)",
    ),
    "linear bias int": (
        lambda: lj.linear(_jx(), *_jw(), jnp.zeros(4, jnp.int32)),
        TypeError,
        r"bias must be float32, float16 or bfloat16, got int32",
    ),
    "linear bias shape": (
        lambda: lj.linear(_jx(), *_jw(), jnp.zeros(5)),
        ValueError,
        r"bias must have shape \(4,\)",
    ),
    "linear threshold < 0": (
        lambda: lj.linear(_jx(), *_jw(), threshold=-1.0),
        ValueError,
        r"threshold must be a number >= 0",
    ),
    "linear threshold NaN": (
        lambda: lj.linear(_jx(), *_jw(), threshold=NAN),
        ValueError,
        r"threshold must be",
    ),
    "linear threshold str": (
        lambda: lj.linear(_jx(), *_jw(), threshold="6"),
        TypeError,
        r"threshold must be a static",
    ),
    "linear threshold None": (
        lambda: lj.linear(_jx(), *_jw(), threshold=None),
        TypeError,
        r"threshold must be a static",
    ),
    "linear threshold traced": (
        lambda: jax.jit(lambda t: lj.linear(_jx(), *_jw(), threshold=t))(6.0),
        TypeError,
        r"static Python number",
    ),
    "weight_linear x int": (
        lambda: lj.weight_linear(_jx(dtype=jnp.int32), *_jw()),
        TypeError,
        r"x must be float32",
    ),
    "weight_linear K mismatch": (
        lambda: lj.weight_linear(_jx((2, 9)), *_jw()),
        ValueError,
        r"x has 9 features",
    ),
    "linear_fp w int8": (lambda: lj.linear_fp(_jx(), _jw()[0]), TypeError, r"w must be float32"),
    "linear_fp w 1-D": (lambda: lj.linear_fp(_jx(), _jx((8,))), ValueError, r"w must be 2-D"),
    "linear_fp K mismatch": (
        lambda: lj.linear_fp(_jx(), _jx((4, 7))),
        ValueError,
        r"x has 8 features but w expects 7",
    ),
    "linear_fp bias shape": (
        lambda: lj.linear_fp(_jx(), _jx((4, 8)), jnp.zeros(3)),
        ValueError,
        r"bias must have shape \(4,\)",
    ),
    "linear_fp threshold NaN": (
        lambda: lj.linear_fp(_jx(), _jx((4, 8)), threshold=NAN),
        ValueError,
        r"threshold",
    ),
    "quantize_weight int8": (lambda: lj.quantize_weight(_jw()[0]), TypeError, r"w must be float32"),
    "quantize_weight 3-D": (
        lambda: lj.quantize_weight(_jx((1, 4, 8))),
        ValueError,
        r"w must be 2-D",
    ),
    "dequantize_weight CB float": (
        lambda: lj.dequantize_weight(_jx((4, 8)), _jw()[1]),
        TypeError,
        r"CB must be int8",
    ),
    "dequantize_weight SCB shape": (
        lambda: lj.dequantize_weight(_jw()[0], jnp.ones(3)),
        ValueError,
        r"SCB must have shape \(4,\)",
    ),
    "dequantize_weight dtype": (
        lambda: lj.dequantize_weight(*_jw(), jnp.int8),
        TypeError,
        r"dtype must be float32",
    ),
    "vectorwise_quant x int": (
        lambda: lj.quantize_rows(_jx(dtype=jnp.int32)),
        TypeError,
        r"x must be float32",
    ),
    "vectorwise_quant threshold < 0": (
        lambda: lj.quantize_rows(_jx(), -2.0),
        ValueError,
        r"threshold",
    ),
    "vectorwise_dequant q float": (
        lambda: lj.dequantize_rows(_jx(), jnp.ones(2)),
        TypeError,
        r"q must be int8",
    ),
    "vectorwise_dequant row_scale shape": (
        lambda: lj.dequantize_rows(_jx(dtype=jnp.int8), jnp.ones(3)),
        ValueError,
        r"row_scale must have shape",
    ),
    "int8_gemm A float": (lambda: lj.int8_gemm(_jx(), _jw()[0]), TypeError, r"A must be int8"),
    "int8_gemm A scalar": (
        lambda: lj.int8_gemm(jnp.int8(1), _jw()[0]),
        ValueError,
        r"A must have at least one",
    ),
    "int8_gemm B shape": (
        lambda: lj.int8_gemm(_jx(dtype=jnp.int8), jnp.zeros((4, 7), jnp.int8)),
        ValueError,
        r"B must be 2-D \(N, K\) with K = 8",
    ),
    "mm_dequant C int8": (
        lambda: lj.dequant_epilogue(_jx((2, 4), jnp.int8), jnp.ones(2), jnp.ones(4)),
        TypeError,
        r"C must be int32",
    ),
    "mm_dequant row_scale shape": (
        lambda: lj.dequant_epilogue(_jx((2, 4), jnp.int32), jnp.ones(3), jnp.ones(4)),
        ValueError,
        r"row_scale must have shape",
    ),
    "mm_dequant col_scale shape": (
        lambda: lj.dequant_epilogue(_jx((2, 4), jnp.int32), jnp.ones(2), jnp.ones(3)),
        ValueError,
        r"col_scale must have shape \(4,\)",
    ),
    "mm_dequant bias int": (
        lambda: lj.dequant_epilogue(
            _jx((2, 4), jnp.int32), jnp.ones(2), jnp.ones(4), jnp.zeros(4, jnp.int32)
        ),
        TypeError,
        r"bias must be float32",
    ),
    "transform a float": (
        lambda: lj.transform_layout(_jx((4, 8)), "col32"),
        TypeError,
        r"a must be int8",
    ),
    "transform order": (
        lambda: lj.transform_layout(_jw()[0], "col64"),
        ValueError,
        r"to_order must be one of",
    ),
    "transform no shape": (
        lambda: lj.transform_layout(jnp.zeros((8, 32), jnp.int8), "row", "col32"),
        ValueError,
        r"needs shape=\(rows, cols\)",
    ),
    "transform negative shape": (
        lambda: lj.transform_layout(jnp.zeros(32, jnp.int8), "row", "col32", (-1, 4)),
        ValueError,
        r"shape must be \(rows, cols\) with both >= 0",
    ),
    "transform buffer size": (
        lambda: lj.transform_layout(jnp.zeros(32, jnp.int8), "row", "col32", (4, 8)),
        ValueError,
        r"has 128 elements, got 32",
    ),
    "Dense8bit threshold < 0": (
        lambda: _dense(threshold=-1.0),
        ValueError,
        r"threshold must be a number >= 0",
    ),
    "Dense8bit dtype int": (
        lambda: _dense(dtype=jnp.int32),
        TypeError,
        r"dtype \(the compute dtype\) must be float32",
    ),
    "Dense8bit K mismatch": (
        lambda: _dense()[0].apply(_dense()[1], _jx((2, 7))),
        ValueError,
        r"x has 7 features but the int8 weight CB has shape \(4, 8\)",
    ),
    "Dense8bit no int8 collection": (
        lambda: _dense()[0].apply({"params": _dense()[1]["params"]}, _jx()),
        ValueError,
        r"needs its 'int8' collection",
    ),
    "Dense8bit CB float": (
        lambda: _dense()[0].apply(
            {**_dense()[1], "int8": {"CB": _jx((4, 8)), "SCB": jnp.ones(4)}}, _jx()
        ),
        TypeError,
        r"CB must be int8",
    ),
    "Dense8bit scalar": (
        lambda: _dense()[0].apply(_dense()[1], jnp.float32(1)),
        ValueError,
        r"Dense8bit needs inputs",
    ),
    "nnx threshold NaN": (
        lambda: Linear8bit(8, 4, threshold=NAN, rngs=jax_nnx_rngs()),
        ValueError,
        r"threshold",
    ),
    "nnx dtype int": (
        lambda: Linear8bit(8, 4, dtype=jnp.int32, rngs=jax_nnx_rngs())(_jx()),
        TypeError,
        r"dtype \(the compute dtype\) must be float32",
    ),
    "nnx K mismatch": (
        lambda: Linear8bit(8, 4, rngs=jax_nnx_rngs())(_jx((2, 7))),
        ValueError,
        r"x has 7 features but CB expects 8",
    ),
}


def jax_nnx_rngs():
    from flax import nnx

    return nnx.Rngs(0)


@pytest.mark.parametrize("case", list(JAX_BAD))
def test_jax_bad_input_raises_clear_error(case):
    call, exc, match = JAX_BAD[case]
    with pytest.raises(exc, match=match):
        call()


def test_jax_float64_is_a_clear_error_under_x64():
    with jax.enable_x64(True):
        x = jnp.zeros((2, 8), jnp.float64)
        with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16, got float64"):
            lj.linear(x, *_jw())
        with pytest.raises(TypeError, match=r"w must be float32, float16 or bfloat16, got float64"):
            lj.quantize_weight(jnp.zeros((4, 8), jnp.float64))


def test_jax_mixed_devices():
    """Weights committed to the CPU, input on the GPU: JAX's own device error, or the right
    result if JAX moves the data."""
    from jax_helpers import gpu_device

    gpu = gpu_device()
    if gpu is None:
        require_cuda()  # skips (or fails under LT8_REQUIRE_CUDA=1)
        pytest.skip("needs a JAX GPU backend")
    cpu = jax.devices("cpu")[0]
    W = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    CB, SCB = (jax.device_put(a, cpu) for a in lj.quantize_weight(W))
    x = jax.device_put(jnp.ones((2, 8)), gpu)
    try:
        out = lj.linear(x, CB, SCB, threshold=6.0)
    except ValueError as e:
        assert "device" in str(e).lower()
    else:
        np.testing.assert_array_equal(
            np.asarray(out), np.asarray(lj.linear(jax.device_put(x, cpu), CB, SCB, threshold=6.0))
        )


# --- JAX: what is computed, not rejected -----------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16), (0, 3, 16), (16,)], ids=str)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_jax_empty_and_small_batches(platform, rng, shape, threshold):
    K, N = shape[-1], 5
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((N, K)).astype(np.float32))
    CB, SCB = lj.quantize_weight(w)
    bias = jnp.ones(N)
    out = jax.jit(lambda x: lj.linear(x, CB, SCB, bias, threshold))(x)
    assert out.shape == (*shape[:-1], N)
    xn, cb, scb = np.asarray(x), np.asarray(CB), np.asarray(SCB)
    ref = linear_ref(xn, cb, scb, np.ones(N), threshold)
    q = np.asarray(lj.quantize_rows(x, threshold)[0])
    assert np.all(
        np.abs(np.asarray(out) - ref)
        <= linear_error_bound(xn, cb, scb, ref, 2.0**-24, 0, threshold, q)
    )
    gx, gb = jax.grad(lambda x, b: lj.linear(x, CB, SCB, b, threshold).sum(), argnums=(0, 1))(
        x, bias
    )
    assert gx.shape == x.shape
    np.testing.assert_array_equal(np.asarray(gb), np.full(N, np.prod(shape[:-1]), np.float32))
    gx, gw, gb = jax.grad(
        lambda x, w, b: lj.linear_fp(x, w, b, threshold).sum(), argnums=(0, 1, 2)
    )(x, w, bias)
    assert (gx.shape, gw.shape, gb.shape) == (x.shape, w.shape, (N,))
    assert lj.weight_linear(x, CB, SCB).shape == out.shape


@pytest.mark.parametrize("K,N", [(1, 1), (3, 33), (0, 4), (4, 0), (33, 4097), (4097, 3)], ids=str)
def test_jax_odd_sizes_and_layers(platform, rng, K, N):
    """Sizes that are no multiple of the tile, zero-size weights, the linen and NNX layers,
    and gradients all through."""
    x = jnp.asarray(np.clip(rng.standard_normal((3, K)), -3, 3).astype(np.float32))
    if K:
        x = x.at[0, K // 2].set(10.0)
    w = rng.standard_normal((N, K)).astype(np.float32)
    CB, SCB = lj.quantize_weight(jnp.asarray(w))
    cb, scb = np.asarray(CB), np.asarray(SCB)
    q, _, _ = lj.quantize_rows(x, 6.0)
    out = np.asarray(lj.linear(x, CB, SCB, None, 6.0), np.float64)
    ref = linear_ref(np.asarray(x), cb, scb, None, 6.0)
    assert np.all(
        np.abs(out - ref)
        <= linear_error_bound(np.asarray(x), cb, scb, ref, 2.0**-24, 2.0**-149, 6.0, np.asarray(q))
    )
    g = jnp.asarray(rng.standard_normal((3, N)).astype(np.float32))
    gx = np.asarray(jax.vjp(lambda x: lj.linear(x, CB, SCB, None, 6.0), x)[1](g)[0])
    ref_g = grad_input_ref(np.asarray(g), cb, scb)
    S = np.abs(np.asarray(g, np.float64)) @ np.abs(cb * scb[:, None].astype(np.float64) / 127)
    assert np.all(np.abs(gx - ref_g) <= (N + 4) * 2.0**-23 * S + 2.0**-23 * np.abs(ref_g))
    variables = lj.Dense8bit.variables_from_dense(
        {"kernel": jnp.asarray(w.T), "bias": jnp.zeros(N)}
    )
    dense = lj.Dense8bit(N, threshold=6.0)
    np.testing.assert_array_equal(np.asarray(dense.apply(variables, x)), out.astype(np.float32))


@pytest.mark.parametrize("shape", [(2, 3, 24), (2, 1, 3, 24)], ids=str)
def test_jax_3d_and_4d_inputs(platform, rng, shape):
    x = np.clip(rng.standard_normal(shape), -3, 3).astype(np.float32)
    x.reshape(-1, 24)[-1, 4] = 12.0
    x = jnp.asarray(x, jnp.float16)
    CB, SCB = lj.quantize_weight(jnp.asarray(rng.standard_normal((10, 24)).astype(np.float32)))
    out = lj.linear(x, CB, SCB, None, 6.0)
    assert out.shape == (*shape[:-1], 10)
    np.testing.assert_array_equal(
        np.asarray(out).reshape(-1, 10),
        np.asarray(lj.linear(x.reshape(-1, 24), CB, SCB, None, 6.0)),
    )
    layer = Linear8bit(24, 10, threshold=6.0, rngs=jax_nnx_rngs())
    assert layer(x).shape == out.shape
    strided = np.asarray(x, np.float32)[..., ::-1].copy()[..., ::-1]  # a non-contiguous numpy input
    np.testing.assert_array_equal(
        np.asarray(lj.linear(jnp.asarray(strided, jnp.float16), CB, SCB, None, 6.0)),
        np.asarray(out),
    )

"""Linear8bitLt beyond the seed: dtypes, 3-D inputs, training mode, copies, pickling,
replace_linear, torch.compile, CUDA graphs, safe checkpoint loading, bitsandbytes interop."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from conftest import require_cuda
from reference import grad_input_ref, linear_ref

import lt8
from lt8.nn import Int8Params, Linear8bitLt
from lt8.torch import replace_linear


def quantized_pair(in_f, out_f, device, threshold=6.0, bias=True, dtype=torch.float32):
    """(fp32 nn.Linear, the same weights as an lt8 Linear8bitLt quantized on `device`)."""
    fp = torch.nn.Linear(in_f, out_f, bias=bias)
    q = Linear8bitLt(in_f, out_f, bias, has_fp16_weights=False, threshold=threshold)
    q.weight = Int8Params(fp.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    if bias:
        q.bias = torch.nn.Parameter(fp.bias.data.clone().to(dtype))
    return fp.to(device), q.to(device)


def with_outliers(x: torch.Tensor, cols=(3, 17), value=9.0) -> torch.Tensor:
    x = x.clone()
    x[..., list(cols)] *= 0
    x[..., cols[0]] += value
    x[..., cols[1]] -= value
    return x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_forward_and_input_grad_match_reference(device, dtype, threshold):
    fp, q = quantized_pair(64, 48, device, threshold)
    x = with_outliers(torch.randn(2, 5, 64)).to(device=device, dtype=dtype).requires_grad_(True)
    out = q(x)
    assert out.dtype == dtype and out.shape == (2, 5, 48)
    CB, SCB = q.weight.data.cpu().numpy(), q.weight.SCB.cpu().numpy()
    ref = linear_ref(
        x.detach().cpu().double().numpy(), CB, SCB, q.bias.detach().cpu().numpy(), threshold
    )
    tol = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}[dtype] * (
        np.abs(ref).max() + 1
    )
    np.testing.assert_allclose(out.detach().cpu().double().numpy(), ref, atol=tol, rtol=0)
    g = torch.randn_like(out)
    out.backward(g)
    ref_g = grad_input_ref(g.cpu().double().numpy().reshape(-1, 48), CB, SCB).reshape(2, 5, 64)
    np.testing.assert_allclose(x.grad.cpu().double().numpy(), ref_g, atol=tol, rtol=0)
    # And against the floating-point layer it came from, within int8 error.
    fp_out = fp(x.detach().float())
    rel = (out.float() - fp_out).norm() / fp_out.norm()
    assert rel < 0.03


def test_outlier_decomposition_reduces_error(device):
    fp, q6 = quantized_pair(256, 128, device, threshold=6.0)
    _, q0 = quantized_pair(256, 128, device, threshold=0.0)
    q0.load_state_dict(q6.state_dict())
    x = with_outliers(torch.randn(16, 256), value=40.0).to(device)
    ref = fp(x)
    err6 = (q6(x) - ref).norm() / ref.norm()
    err0 = (q0(x) - ref).norm() / ref.norm()
    assert err6 < 0.5 * err0


def test_training_mode_gradients(device):
    torch.manual_seed(0)
    fp = torch.nn.Linear(32, 16).to(device)
    q = Linear8bitLt(32, 16, has_fp16_weights=True, threshold=6.0)
    q.weight = Int8Params(fp.weight.data.clone(), requires_grad=True, has_fp16_weights=True)
    q.bias = torch.nn.Parameter(fp.bias.data.clone())
    q = q.to(device)
    assert q.weight.dtype == torch.float32 and q.weight.requires_grad
    x = torch.randn(8, 32, device=device)
    q(x).pow(2).sum().backward()
    fp(x).pow(2).sum().backward()
    # Ordinary gradients of x @ W.T + b evaluated at the int8 forward: close to fp32's.
    assert torch.allclose(
        q.weight.grad, fp.weight.grad, rtol=0.05, atol=0.05 * fp.weight.grad.abs().max().item()
    )
    assert torch.allclose(
        q.bias.grad, fp.bias.grad, rtol=0.05, atol=0.05 * fp.bias.grad.abs().max().item()
    )
    # The weight stays float and trains.
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    before = q.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, q.weight.detach())


def test_int8_weight_is_resident_and_half_of_fp16(device):
    _, q = quantized_pair(1024, 64, device)
    assert q.weight.dtype == torch.int8 and q.weight.device.type == device
    assert q.weight.SCB.dtype == torch.float32 and q.weight.SCB.shape == (64,)
    assert q.state.CB is q.weight.data or torch.equal(q.state.CB, q.weight.data)
    fp16_bytes = 1024 * 64 * 2
    assert (
        q.weight.numel() * q.weight.element_size() + q.weight.SCB.numel() * 4 <= 0.51 * fp16_bytes
    )
    assert not q.weight.requires_grad


def test_to_dtype_does_not_quantize_or_dequantize():
    p = Int8Params(torch.randn(8, 4), requires_grad=False, has_fp16_weights=False)
    p16 = p.to(torch.float16)
    assert p16.dtype == torch.float16 and p16.SCB is None
    q = p.to("cpu")
    assert q.dtype == torch.int8 and q.SCB is not None
    assert q.to(torch.float16).dtype == torch.int8


def test_deepcopy_and_pickle_keep_the_int8_state(device):
    _, q = quantized_pair(32, 96, device)
    x = torch.randn(4, 32, device=device, dtype=torch.float16)
    for clone in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert isinstance(clone.weight, Int8Params)
        assert clone.weight.data_ptr() != q.weight.data_ptr()
        assert torch.equal(clone.weight.data, q.weight.data)
        assert torch.equal(clone.weight.SCB, q.weight.SCB)
        assert clone.state.CB is not None and torch.equal(clone.state.SCB, q.state.SCB)
        assert torch.equal(clone(x), q(x))
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), q(x))


def test_failed_load_leaves_module_unchanged(device):
    _, q = quantized_pair(32, 16, device)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    good = q.state_dict()
    bad_cases = [
        {k: v for k, v in good.items() if k != "SCB"} | {"SCB": torch.ones(15)},  # wrong SCB shape
        good | {"weight": torch.zeros(16, 31, dtype=torch.int8)},  # wrong weight shape
        good | {"weight": torch.zeros(16, 32, dtype=torch.int16)},  # wrong dtype
        good | {"weight_format": torch.tensor(7, dtype=torch.uint8)},  # unknown format
        good | {"bias": torch.zeros(3)},
    ]
    for bad in bad_cases:
        with pytest.raises(RuntimeError):
            q.load_state_dict(bad)
        after = q.state_dict()
        for k in before:
            assert torch.equal(before[k], after[k]), k


def test_load_tiled_checkpoint(device):
    """Old bitsandbytes checkpoints may hold the weight in a tiled order: it is undone on load."""
    _, q = quantized_pair(40, 70, device)
    sd = q.state_dict()
    for order, code in (("col_turing", 2), ("col_ampere", 3), ("col32", 1)):
        tiled, _ = lt8.functional.transform(sd["weight"], to_order=order)
        q2 = quantized_pair(40, 70, device)[1]
        q2.load_state_dict(
            sd | {"weight": tiled, "weight_format": torch.tensor(code, dtype=torch.uint8)}
        )
        assert torch.equal(q2.weight.data, q.weight.data)


def test_fp_checkpoint_into_quantized_module_quantizes(device):
    fp, q = quantized_pair(32, 16, device)
    q2 = quantized_pair(32, 16, device)[1]
    q2.load_state_dict(fp.state_dict())
    assert torch.equal(q2.weight.data, q.weight.data) and torch.equal(q2.weight.SCB, q.weight.SCB)


def test_replace_linear(device):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(16, 32),
                torch.nn.ReLU(),
                torch.nn.Sequential(torch.nn.Linear(32, 32)),
            )
            self.lm_head = torch.nn.Linear(32, 8)

        def forward(self, x):
            return self.lm_head(self.body(x))

    model = Model()
    x = torch.randn(5, 16)
    ref = model(x)
    replace_linear(model, threshold=6.0)
    model = model.to(device)
    assert isinstance(model.body[0], Linear8bitLt) and isinstance(model.body[2][0], Linear8bitLt)
    assert type(model.lm_head) is torch.nn.Linear
    assert model.body[0].weight.dtype == torch.int8
    out = model(x.to(device))
    assert ((out.cpu() - ref).norm() / ref.norm()) < 0.03


@pytest.mark.parametrize("fullgraph", [True, False])
def test_torch_compile(device, fullgraph):
    torch.compiler.reset()
    net = torch.nn.Sequential(*[quantized_pair(64, 64, device, threshold=6.0)[1] for _ in range(3)])
    x = with_outliers(torch.randn(8, 64)).to(device=device, dtype=torch.float16)
    with torch.no_grad():
        ref = net(x)
        compiled = torch.compile(
            net, fullgraph=fullgraph, backend="inductor" if device == "cuda" else "aot_eager"
        )
        out = compiled(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # Gradients through the compiled graph equal eager ones.
    xg = x.clone().requires_grad_(True)
    compiled(xg).float().sum().backward()
    xe = x.clone().requires_grad_(True)
    net(xe).float().sum().backward()
    torch.testing.assert_close(xg.grad, xe.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_torch_compile_cuda_modes(mode):
    require_cuda()
    torch.compiler.reset()
    net = torch.nn.Sequential(
        *[quantized_pair(256, 256, "cuda", threshold=6.0)[1] for _ in range(4)]
    )
    x = with_outliers(torch.randn(16, 256)).to(device="cuda", dtype=torch.float16)
    with torch.no_grad():
        ref = net(x)
        compiled = torch.compile(net, fullgraph=True, mode=mode)
        for _ in range(3):
            out = compiled(x)
    torch.testing.assert_close(out, ref)


@pytest.mark.cuda
def test_cuda_graph_capture():
    require_cuda()
    _, q = quantized_pair(512, 256, "cuda", threshold=6.0)
    static_x = with_outliers(torch.randn(4, 512)).to(device="cuda", dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(2):
            q(static_x)  # warm up outside capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        static_out = q(static_x)
    for _ in range(3):
        new_x = with_outliers(torch.randn(4, 512), cols=(5, 99)).to(
            device="cuda", dtype=torch.float16
        )
        static_x.copy_(new_x)
        g.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            torch.testing.assert_close(static_out, q(new_x), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_device_index_is_honoured():
    from conftest import require_gpus

    require_gpus(2)  # fails under LT8_REQUIRE_CUDA=1 unless LT8_GPUS says fewer
    fp, q = quantized_pair(64, 32, "cuda:1")
    x = torch.randn(3, 64, device="cuda:1", dtype=torch.float16)
    with torch.cuda.device(0):
        out = q(x)
    assert out.device == torch.device("cuda:1")
    assert ((out.float() - fp(x.float())).norm() / fp(x.float()).norm()) < 0.03


def test_cuda_tensor_on_cpu_weights_is_a_clear_error():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to create a CUDA tensor")
    _, q = quantized_pair(16, 8, "cpu")
    with pytest.raises(ValueError, match="move them to one device"):
        q(torch.randn(2, 16, device="cuda"))

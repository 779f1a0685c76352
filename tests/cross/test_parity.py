"""torch and JAX run the same kernels: same inputs give bit-identical results on one platform.

Checked op by op (quantization, int8 GEMM, the fused linear op and its input gradient, the
weight-only path, layouts), then for a small multi-layer model run in both frameworks from one
checkpoint (an MLP block and an attention block's projections), fp16/bf16/fp32, with and without
outliers, on the CPU and, where both frameworks see a GPU, on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from conftest import require_cuda  # noqa: E402
from jax_helpers import gpu_device  # noqa: E402

import lt8.torch  # noqa: E402,F401
from lt8.jax import Dense8bit  # noqa: E402
from lt8.jax import ops as jops

DTYPES = [
    ("f32", torch.float32, jnp.float32),
    ("f16", torch.float16, jnp.float16),
    ("bf16", torch.bfloat16, jnp.bfloat16),
]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def devices(request):
    """(torch device, jax device) on one platform."""
    if request.param == "cpu":
        return "cpu", jax.devices("cpu")[0]
    require_cuda()
    jdev = gpu_device()
    if jdev is None:
        pytest.fail("torch sees CUDA but JAX has no GPU backend with lt8's CUDA handlers")
    return "cuda", jdev


def to_np(t) -> np.ndarray:
    """Bits of a torch tensor or jax array as numpy (bf16 compared through its raw bits)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    a = np.asarray(t)
    return a.view(np.int16) if a.dtype.name == "bfloat16" else a


def assert_same_bits(a, b):
    x, y = to_np(a), to_np(b)
    assert x.shape == y.shape and x.dtype.itemsize == y.dtype.itemsize
    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


def inputs(rng, shape, dtype_pair, outliers=True):
    x = rng.standard_normal(shape).astype(np.float32)
    if outliers:
        x[..., [1, shape[-1] // 2]] *= 15.0
    _, tdt, jdt = dtype_pair
    return torch.from_numpy(x).to(tdt), jnp.asarray(x, jdt)


def quantized_weight(rng, N, K):
    W = torch.from_numpy((rng.standard_normal((N, K)) * 0.05).astype(np.float32))
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    return CB, SCB


@pytest.mark.parametrize("dt", DTYPES, ids=[d[0] for d in DTYPES])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_ops_bit_identical(devices, rng, dt, threshold):
    tdev, jdev = devices
    M, K, N = 12, 96, 40
    xt, xj = inputs(rng, (M, K), dt)
    CB, SCB = quantized_weight(rng, N, K)
    bias_t = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(dt[1])
    put = lambda a: jax.device_put(a, jdev)  # noqa: E731
    CBj, SCBj, biasj = (
        put(jnp.asarray(CB.numpy())),
        put(jnp.asarray(SCB.numpy())),
        put(jnp.asarray(bias_t.float().numpy(), dt[2])),
    )
    xt, xj = xt.to(tdev), put(xj)
    CBt, SCBt, biast = CB.to(tdev), SCB.to(tdev), bias_t.to(tdev)

    # quantization
    for a, b in zip(torch.ops.lt8.quantize_rows(xt, threshold), jops.quantize_rows(xj, threshold)):
        assert_same_bits(
            a.to(torch.uint8) if a.dtype == torch.bool else a,
            b.astype(jnp.uint8) if b.dtype == jnp.bool_ else b,
        )
    # weight quantization from the same float weight
    Wt = torch.randn(N, K).to(dt[1])
    for a, b in zip(
        lt8.torch.functional.quantize_weight(Wt.to(tdev)),
        jops.quantize_weight(put(jnp.asarray(Wt.float().numpy(), dt[2]))),
    ):
        assert_same_bits(a, b)
    # int8 GEMM
    q = torch.ops.lt8.quantize_rows(xt, threshold)[0]
    assert_same_bits(
        torch.ops.lt8.int8_gemm(q, CBt), jops.int8_gemm(put(jnp.asarray(q.cpu().numpy())), CBj)
    )
    # fused linear forward and input gradient
    out_t = torch.ops.lt8.int8_linear(xt, CBt, SCBt, biast, threshold)
    out_j = jax.jit(lambda x: jops.linear(x, CBj, SCBj, biasj, threshold=threshold))(xj)
    assert_same_bits(out_t, out_j)
    g = rng.standard_normal((M, N)).astype(np.float32)
    gt, gj = torch.from_numpy(g).to(dt[1]).to(tdev), put(jnp.asarray(g, dt[2]))
    gx_t = torch.ops.lt8.int8_linear_grad_input(gt, CBt, SCBt)
    _, vjp = jax.vjp(lambda x: jops.linear(x, CBj, SCBj, biasj, threshold=threshold), xj)
    assert_same_bits(gx_t, vjp(gj)[0])
    # weight-only path
    assert_same_bits(
        torch.ops.lt8.int8_weight_linear(xt, CBt, SCBt, biast),
        jops.weight_linear(xj, CBj, SCBj, biasj),
    )


def test_layouts_bit_identical(devices, rng):
    tdev, jdev = devices
    A = rng.integers(-127, 128, (40, 70), dtype=np.int8)
    for order in ("col32", "col_turing", "col_ampere"):
        t = lt8.functional.transform(torch.from_numpy(A).to(tdev), to_order=order)[0]
        j = jops.transform_layout(jax.device_put(jnp.asarray(A), jdev), to_order=order)
        assert_same_bits(t, np.asarray(j).reshape(t.shape))


class TorchBlock(torch.nn.Module):
    """An attention block's projections plus an MLP, in fp (converted with replace_linear)."""

    def __init__(self, d: int, ff: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.up, self.down = torch.nn.Linear(d, ff), torch.nn.Linear(ff, d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        att = torch.softmax((q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5, -1).to(
            x.dtype
        )
        h = x + self.o(att @ v)
        return h + self.down(torch.relu(self.up(h)))


def jax_block(params, x, threshold):
    lin = lambda name, h: jops.linear(h, *params[name], threshold=threshold)  # noqa: E731
    q, k, v = lin("q", x), lin("k", x), lin("v", x)
    att = jax.nn.softmax(
        (q.astype(jnp.float32) @ jnp.swapaxes(k.astype(jnp.float32), -1, -2)) / q.shape[-1] ** 0.5,
        -1,
    ).astype(x.dtype)
    h = x + lin("o", att @ v)
    return h + lin("down", jax.nn.relu(lin("up", h)))


@pytest.mark.parametrize("dt", DTYPES[1:], ids=[d[0] for d in DTYPES[1:]])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_model_from_one_checkpoint(devices, rng, dt, threshold):
    """Every int8 linear matches bit for bit; the float glue (softmax, residuals) may round
    differently between frameworks, so the model output is compared within that rounding and each
    layer's output is checked bit for bit on the same input."""
    tdev, jdev = devices
    d, ff = 64, 128
    model = TorchBlock(d, ff)
    lt8.torch.replace_linear(model, threshold=threshold, skip_modules=())
    model = model.to(tdev).to(dt[1])
    sd = model.state_dict()
    params = {}
    for name in ("q", "k", "v", "o", "up", "down"):
        variables = Dense8bit.variables_from_torch(
            {k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(name + ".")}
        )
        variables = jax.device_put(variables, jdev)
        params[name] = (
            variables["int8"]["CB"],
            variables["int8"]["SCB"],
            variables["params"]["bias"],
        )
    xt, xj = inputs(rng, (2, 8, d), dt)
    xt, xj = xt.to(tdev), jax.device_put(xj, jdev)
    with torch.no_grad():
        out_t = model(xt)
        for name in ("q", "up"):  # layer by layer on the same input: bit-identical
            layer_in_t = xt
            assert_same_bits(
                getattr(model, name)(layer_in_t),
                jops.linear(xj, *params[name], threshold=threshold),
            )
        # The MLP half has only exactly-rounded float glue (relu, one add): bit-identical too.
        mlp_t = xt + model.down(torch.relu(model.up(xt)))
    lin = lambda name, h: jops.linear(h, *params[name], threshold=threshold)  # noqa: E731
    mlp_j = jax.jit(lambda x: x + lin("down", jax.nn.relu(lin("up", x))))(xj)
    assert_same_bits(mlp_t, mlp_j)
    out_j = jax.jit(lambda p, x: jax_block(p, x, threshold))(params, xj)
    ref = to_np(out_t.float())
    got = np.asarray(out_j.astype(jnp.float32))
    eps = {"f16": 2.0**-10, "bf16": 2.0**-7}[dt[0]]
    np.testing.assert_allclose(got, ref, rtol=0, atol=16 * eps * (np.abs(ref).max() + 1))

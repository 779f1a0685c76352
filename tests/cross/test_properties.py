"""Property tests (hypothesis): every lt8 op, torch and JAX, against the float64 reference over
shapes (any number of leading dimensions, empty batches, sizes that are no multiple of a tile),
dtypes, thresholds and value distributions, including heavy tails, many or all outlier columns,
all-zero rows and values near fp16's maximum. Bounded for CI; LT8_HYPOTHESIS_EXAMPLES raises the
count (the GPU script)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reference import (  # noqa: E402  # noqa: E402
    dequant_epilogue_f32,
    dequant_epilogue_ref,
    dequantize_rows_f32,
    grad_input_ref,
    linear_error_bound,
    linear_ref,
    quantize_rows_ref,
    weight_linear_ref,
)

import lt8.torch  # noqa: E402,F401

EXAMPLES = int(os.environ.get("LT8_HYPOTHESIS_EXAMPLES", "25"))
PROFILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# (dtype, relative rounding, largest value used, absolute rounding of subnormal outputs)
DTYPES = {
    "f32": (torch.float32, 2.0**-24, 3.0e38, 2.0**-150),
    "f16": (torch.float16, 2.0**-11, 6.0e4, 2.0**-25),
    "bf16": (torch.bfloat16, 2.0**-8, 3.0e38, 2.0**-134),
}


@st.composite
def activations(draw):
    M = draw(st.integers(0, 24))
    K = draw(st.integers(1, 200))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    kind = draw(st.sampled_from(["normal", "heavy", "all_outliers", "zero_rows", "few_outliers"]))
    threshold = draw(st.sampled_from([0.0, 0.5, 3.0, 6.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((M, K))
    elif kind == "heavy":
        x = rng.standard_t(1.5, (M, K)) * 3  # Student-t: many large values, many outlier columns
    elif kind == "all_outliers":
        x = np.sign(rng.standard_normal((M, K)) + 0.1) * (
            max(threshold, 1.0) + rng.exponential(5, (M, K))
        )
    elif kind == "zero_rows":
        x = rng.standard_normal((M, K))
        x[rng.random(M) < 0.5] = 0
        x[:, rng.random(K) < 0.3] = 0
    else:
        x = np.clip(rng.standard_normal((M, K)), -2, 2)
        if M:
            cols = rng.choice(K, size=min(3, K), replace=False)
            x[rng.integers(0, M, cols.size), cols] = rng.uniform(6, 60, cols.size)
    limit = DTYPES[dtype][2] / max(K, 1) / 1e3
    x = np.clip(x, -limit, limit).astype(np.float32)
    return torch.from_numpy(x).to(DTYPES[dtype][0]), dtype, threshold, rng


def f64(t):
    return t.detach().cpu().double().numpy()


@PROFILE
@given(activations())
def test_quantize_rows_property(device, case):
    x, _, threshold, _ = case
    q, scale, mask = (t.cpu() for t in torch.ops.lt8.quantize_rows(x.to(device), threshold))
    q_ref, scale_ref, mask_ref = quantize_rows_ref(f64(x), threshold)
    np.testing.assert_array_equal(mask.numpy(), mask_ref)
    np.testing.assert_array_equal(scale.numpy(), scale_ref.astype(np.float32))
    np.testing.assert_array_equal(q.numpy(), q_ref)  # the kernel's formula, every element
    assert np.all(q.numpy()[:, mask_ref] == 0)
    assert not np.isnan(scale.numpy()).any()
    zero_rows = np.all(f64(x) == 0, axis=1)
    assert np.all(q.numpy()[zero_rows] == 0) and np.all(scale.numpy()[zero_rows] == 0)


@PROFILE
@given(activations(), st.integers(1, 80), st.booleans())
def test_int8_linear_property(device, case, N, with_bias):
    x, dtype, threshold, rng = case
    M, K = x.shape
    W = torch.from_numpy((rng.standard_normal((N, K)) * rng.uniform(0.01, 1)).astype(np.float32))
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)) if with_bias else None
    out = torch.ops.lt8.int8_linear(
        x.to(device),
        CB.to(device),
        SCB.to(device),
        None if bias is None else bias.to(device),
        threshold,
    ).cpu()
    ref = linear_ref(
        f64(x), CB.numpy(), SCB.numpy(), None if bias is None else bias.numpy(), threshold
    )
    assert out.shape == (M, N) and out.dtype == x.dtype
    assert np.isfinite(f64(out)).all()
    # Bound from the reference alone: lt8's int8 rows must equal the reference's (checked in
    # linear_error_bound), then float32 accumulation and one rounding to the output dtype.
    q, _, _ = torch.ops.lt8.quantize_rows(x, threshold)
    tol = linear_error_bound(
        f64(x),
        CB.numpy(),
        SCB.numpy(),
        ref,
        DTYPES[dtype][1],
        DTYPES[dtype][3],
        threshold,
        q.numpy(),
    )
    assert np.all(np.abs(f64(out) - ref) <= tol)


@PROFILE
@given(activations(), st.integers(1, 60))
def test_grad_input_property(device, case, N):
    x, dtype, _, rng = case
    M, K = x.shape
    W = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    g = torch.from_numpy(rng.standard_normal((M, N)).astype(np.float32)).to(x.dtype)
    gx = torch.ops.lt8.int8_linear_grad_input(g.to(device), CB.to(device), SCB.to(device)).cpu()
    ref = grad_input_ref(f64(g), CB.numpy(), SCB.numpy())
    S = np.abs(f64(g)) @ np.abs(CB.numpy().astype(np.float64) * SCB.numpy()[:, None] / 127)
    tol = (N + 4) * 2.0**-23 * S + 2 * DTYPES[dtype][1] * np.abs(ref) + DTYPES[dtype][3]
    assert np.all(np.abs(f64(gx) - ref) <= tol)


@PROFILE
@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 70), st.integers(0, 2**32 - 1))
def test_int8_gemm_property(device, M, N, K, seed):
    rng = np.random.default_rng(seed)
    A = rng.integers(-127, 128, (M, K), dtype=np.int8)
    B = rng.integers(-127, 128, (N, K), dtype=np.int8)
    C = torch.ops.lt8.int8_gemm(
        torch.from_numpy(A).to(device), torch.from_numpy(B).to(device)
    ).cpu()
    np.testing.assert_array_equal(C.numpy(), A.astype(np.int64) @ B.astype(np.int64).T)


# --- every op, any number of leading dimensions -----------------------------------------------------


def _values(rng, shape, kind, threshold, dtype):
    """float32 values of ``shape`` drawn from ``kind`` and kept where dtype's range holds any sum
    of K of them."""
    K = shape[-1]
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "heavy":
        x = rng.standard_t(1.5, shape) * 3  # Student-t: many large values, many outlier columns
    elif kind == "all_outliers":
        x = np.sign(rng.standard_normal(shape) + 0.1) * (
            max(threshold, 1.0) + rng.exponential(5, shape)
        )
    elif kind == "zero_rows":
        x = rng.standard_normal(shape)
        flat = x.reshape(-1, K)
        flat[rng.random(flat.shape[0]) < 0.5] = 0
        flat[:, rng.random(K) < 0.3] = 0
    else:  # few outliers in a clipped bulk
        x = np.clip(rng.standard_normal(shape), -2, 2)
        flat = x.reshape(-1, K)
        if flat.shape[0]:
            cols = rng.choice(K, size=min(3, K), replace=False)
            flat[rng.integers(0, flat.shape[0], cols.size), cols] = rng.uniform(6, 60, cols.size)
    limit = DTYPES[dtype][2] / max(K, 1) / 1e3
    return np.clip(x, -limit, limit).astype(np.float32)


@st.composite
def nd_activations(draw, max_rows: int = 24, max_k: int = 140):
    """(x float32 numpy of shape (*lead, K), dtype name, threshold, rng): lead has 0 to 3
    dimensions (0 included: empty batches), K from 1 to max_k."""
    lead = tuple(
        draw(st.lists(st.integers(0, 5), max_size=3).filter(lambda d: int(np.prod(d)) <= max_rows))
    )
    K = draw(st.integers(1, max_k))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    kind = draw(st.sampled_from(["normal", "heavy", "all_outliers", "zero_rows", "few_outliers"]))
    threshold = draw(st.sampled_from([0.0, 0.5, 3.0, 6.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _values(rng, (*lead, K), kind, threshold, dtype), dtype, threshold, rng


def _int8_weight(rng, N, K):
    W = (rng.standard_normal((N, K)) * rng.uniform(0.01, 1)).astype(np.float32)
    if N:
        W[rng.random(N) < 0.1] = 0  # all-zero rows: SCB 0
    CB, SCB, _ = quantize_rows_ref(W, 0.0)
    return CB, SCB.astype(np.float32)


def _torch(a, dtype, device):
    return torch.from_numpy(np.ascontiguousarray(a)).to(DTYPES[dtype][0]).to(device)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@PROFILE
@given(nd_activations(), st.integers(0, 70), st.booleans())
def test_int8_linear_nd_and_module_property(device, case, N, with_bias):
    """The fused op on (..., K) inputs: the reference bound, the flattened 2-D call's bits, and
    Linear8bitLt (inference fast path and autograd op) giving the op's bits."""
    x, dtype, threshold, rng = case
    CB, SCB = _int8_weight(rng, N, x.shape[-1])
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    xt = _torch(x, dtype, device)
    args = (
        torch.from_numpy(CB).to(device),
        torch.from_numpy(SCB).to(device),
        None if bias is None else torch.from_numpy(bias).to(device),
    )
    out = torch.ops.lt8.int8_linear(xt, *args, threshold)
    assert out.shape == (*x.shape[:-1], N) and out.dtype == xt.dtype
    flat = torch.ops.lt8.int8_linear(
        xt.reshape(math.prod(x.shape[:-1]), x.shape[-1]), *args, threshold
    )
    assert torch.equal(out.reshape(flat.shape), flat)
    q, _, _ = torch.ops.lt8.quantize_rows(xt, threshold)
    ref = linear_ref(f64(xt), CB, SCB, bias, threshold)
    bound = linear_error_bound(
        f64(xt), CB, SCB, ref, DTYPES[dtype][1] / 2, DTYPES[dtype][3], threshold, q.cpu().numpy()
    )
    assert np.all(np.abs(f64(out) - ref) <= bound)
    layer = lt8.nn.Linear8bitLt(
        x.shape[-1], N, bias=with_bias, has_fp16_weights=False, threshold=threshold
    )
    layer.weight = lt8.nn.Int8Params(args[0], requires_grad=False, SCB=args[1])
    if with_bias:
        layer.bias = torch.nn.Parameter(args[2])
    with torch.no_grad():
        assert torch.equal(layer(xt), out)
    assert torch.equal(layer(xt.clone().requires_grad_(True)).detach(), out)


@PROFILE
@given(nd_activations(), st.integers(0, 70), st.booleans())
def test_weight_linear_property(device, case, N, with_bias):
    x, dtype, _, rng = case
    CB, SCB = _int8_weight(rng, N, x.shape[-1])
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    xt = _torch(x, dtype, device)
    out = torch.ops.lt8.int8_weight_linear(
        xt,
        torch.from_numpy(CB).to(device),
        torch.from_numpy(SCB).to(device),
        None if bias is None else torch.from_numpy(bias).to(device),
    )
    ref = weight_linear_ref(f64(xt), CB, SCB, bias)
    assert out.shape == ref.shape and out.dtype == xt.dtype
    assert np.all(
        np.abs(f64(out) - ref)
        <= linear_error_bound(f64(xt), CB, SCB, ref, DTYPES[dtype][1] / 2, DTYPES[dtype][3])
    )


@PROFILE
@given(
    st.lists(st.integers(0, 5), max_size=3),
    st.integers(0, 90),
    st.sampled_from(sorted(DTYPES)),
    st.integers(0, 2**32 - 1),
)
def test_dequantize_rows_property(device, lead, K, dtype, seed):
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (*lead, K), dtype=np.int8)
    scale = np.asarray(rng.exponential(2, lead) * (rng.random(lead) < 0.9), np.float32).reshape(
        lead
    )  # some 0
    out = torch.ops.lt8.dequantize_rows(
        torch.from_numpy(q).to(device), torch.from_numpy(scale).to(device), DTYPES[dtype][0]
    )
    # The kernels' float32 steps, then one rounding to the dtype: bit for bit.
    ref = torch.from_numpy(dequantize_rows_f32(q, scale)).float().to(DTYPES[dtype][0])
    np.testing.assert_array_equal(f64(out), f64(ref))


@PROFILE
@given(
    st.lists(st.integers(0, 5), max_size=2),
    st.integers(0, 40),
    st.integers(0, 70),
    st.booleans(),
    st.sampled_from(sorted(DTYPES)),
    st.integers(0, 2**32 - 1),
)
def test_gemm_and_dequant_epilogue_property(device, lead, N, K, with_bias, dtype, seed):
    """int8 GEMM exact over leading dimensions; its dequantization within a few float32 roundings."""
    rng = np.random.default_rng(seed)
    A = rng.integers(-127, 128, (*lead, K), dtype=np.int8)
    B = rng.integers(-127, 128, (N, K), dtype=np.int8)
    C = torch.ops.lt8.int8_gemm(torch.from_numpy(A).to(device), torch.from_numpy(B).to(device))
    C_ref = (A.astype(np.int64).reshape(math.prod(lead), K) @ B.astype(np.int64).T).reshape(
        *lead, N
    )
    np.testing.assert_array_equal(C.cpu().numpy(), C_ref)
    rs = np.asarray(rng.exponential(3, lead), np.float32).reshape(lead)
    cs = rng.exponential(0.1, N).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    out = torch.ops.lt8.dequant_epilogue(
        C,
        torch.from_numpy(rs).to(device),
        torch.from_numpy(cs).to(device),
        None if bias is None else torch.from_numpy(bias).to(device),
        DTYPES[dtype][0],
    )
    ref = dequant_epilogue_ref(C_ref, rs, cs, bias)
    d = np.abs(dequant_epilogue_ref(C_ref, rs, cs)) + (0 if bias is None else np.abs(bias))
    eps, tiny = DTYPES[dtype][1] / 2, DTYPES[dtype][3]
    assert np.all(np.abs(f64(out) - ref) <= 6 * 2.0**-24 * d + 2 * eps * np.abs(ref) + tiny)
    # ... and exactly the documented float32 evaluation order (cuda/numerics.h dequant).
    exact = torch.from_numpy(dequant_epilogue_f32(C_ref, rs, cs, bias)).float()
    np.testing.assert_array_equal(f64(out), f64(exact.to(DTYPES[dtype][0])))


@PROFILE
@given(
    st.integers(0, 70),
    st.integers(0, 70),
    st.sampled_from(["col32", "col_turing", "col_ampere"]),
    st.integers(0, 2**32 - 1),
)
def test_transform_layout_property(device, rows, cols, order, seed):
    from layout_reference import to_layout_ref as to_layout_reference

    a = np.random.default_rng(seed).integers(-128, 128, (rows, cols), dtype=np.int8)
    tiled = torch.ops.lt8.transform_layout(torch.from_numpy(a).to(device), rows, cols, "row", order)
    np.testing.assert_array_equal(tiled.cpu().numpy(), to_layout_reference(a, order))
    back = torch.ops.lt8.transform_layout(tiled, rows, cols, order, "row")
    np.testing.assert_array_equal(back.cpu().numpy(), a)


@st.composite
def fp16_range(draw):
    """fp16 activations of magnitude up to 65504 and a weight small enough (|W| <= 0.9 / K) for
    every output to stay in fp16's range."""
    M, K, N = draw(st.integers(1, 20)), draw(st.integers(1, 150)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = draw(st.sampled_from([6.0e4, 65504.0, 3.0e4]))
    x = rng.choice([-1.0, 1.0], (M, K)) * rng.uniform(0, top, (M, K)) ** draw(
        st.sampled_from([1.0, 0.5])
    )
    x *= top / max(np.abs(x).max(), 1.0)
    W = rng.uniform(-0.9, 0.9, (N, K)) / K
    return (
        x.astype(np.float16),
        W.astype(np.float32),
        draw(st.sampled_from([0.0, 6.0, 1.0e3, 7.0e4])),
    )


@PROFILE
@given(fp16_range())
def test_fp16_range_property(device, case):
    """Near fp16's maximum nothing overflows: finite outputs within the reference bound."""
    x, W, threshold = case
    CB, SCB = (t.numpy() for t in torch.ops.lt8.quantize_rows(torch.from_numpy(W), 0.0)[:2])
    xt = torch.from_numpy(x).to(device)
    q, _, _ = torch.ops.lt8.quantize_rows(xt, threshold)
    out = f64(
        torch.ops.lt8.int8_linear(
            xt, torch.from_numpy(CB).to(device), torch.from_numpy(SCB).to(device), None, threshold
        )
    )
    ref = linear_ref(x, CB, SCB, None, threshold)
    assert np.isfinite(out).all()
    assert np.all(
        np.abs(out - ref)
        <= linear_error_bound(x, CB, SCB, ref, 2.0**-11, 2.0**-24, threshold, q.cpu().numpy())
    )


# --- JAX: the same properties through lt8.jax ---------------------------------------------------------

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax_helpers import platform  # noqa: E402,F401

import lt8.jax as lj  # noqa: E402

JAX_DTYPES = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}


def _jax(a, dtype):
    return jnp.asarray(a, JAX_DTYPES[dtype])


def j64(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)


@PROFILE
@given(nd_activations())
def test_jax_quantize_property(platform, case):
    x, dtype, threshold, _ = case
    xj = _jax(x, dtype)
    q, scale, mask = lj.quantize_rows(xj, threshold)
    q_ref, scale_ref, mask_ref = quantize_rows_ref(j64(xj), threshold)
    np.testing.assert_array_equal(np.asarray(mask), mask_ref)
    np.testing.assert_array_equal(np.asarray(scale), scale_ref.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(q), q_ref)
    assert np.all(np.asarray(q)[..., mask_ref] == 0)
    back = lj.dequantize_rows(q, scale)
    step = np.asarray(scale, np.float64)[..., None] / 127
    assert np.all(np.abs(j64(back) - np.where(mask_ref, 0, j64(xj))) <= 1.5 * step + 1e-30)


@PROFILE
@given(nd_activations(max_rows=16, max_k=100), st.integers(0, 48), st.booleans())
def test_jax_linear_and_grad_property(platform, case, N, with_bias):
    """linear (jitted) within the reference bound, weight_linear too, and the input gradient of
    linear against g @ W."""
    x, dtype, threshold, rng = case
    CB, SCB = _int8_weight(rng, N, x.shape[-1])
    bias = jnp.asarray(rng.standard_normal(N).astype(np.float32)) if with_bias else None
    xj = _jax(x, dtype)
    out, vjp = jax.vjp(jax.jit(lambda x: lj.linear(x, CB, SCB, bias, threshold)), xj)
    eps, tiny = DTYPES[dtype][1] / 2, DTYPES[dtype][3]
    b = None if bias is None else np.asarray(bias)
    ref = linear_ref(j64(xj), CB, SCB, b, threshold)
    q, _, _ = lj.quantize_rows(xj, threshold)
    assert out.shape == ref.shape and out.dtype == xj.dtype
    assert np.all(
        np.abs(j64(out) - ref)
        <= linear_error_bound(j64(xj), CB, SCB, ref, eps, tiny, threshold, np.asarray(q))
    )
    ref_w = weight_linear_ref(j64(xj), CB, SCB, b)
    out_w = lj.weight_linear(xj, CB, SCB, bias)
    assert np.all(
        np.abs(j64(out_w) - ref_w) <= linear_error_bound(j64(xj), CB, SCB, ref_w, eps, tiny)
    )
    g = _jax(rng.standard_normal(out.shape), dtype)
    (gx,) = vjp(g)
    ref_g = grad_input_ref(j64(g), CB, SCB)
    S = np.abs(j64(g)).reshape(math.prod(g.shape[:-1]), N) @ np.abs(
        CB.astype(np.float64) * SCB[:, None] / 127
    )
    bound = (N + 4) * 2.0**-23 * S.reshape(ref_g.shape) + 2 * eps * np.abs(ref_g) + tiny
    assert gx.shape == xj.shape and np.all(np.abs(j64(gx) - ref_g) <= bound)


@PROFILE
@given(
    st.lists(st.integers(0, 5), max_size=2),
    st.integers(0, 40),
    st.integers(0, 70),
    st.booleans(),
    st.sampled_from(sorted(DTYPES)),
    st.integers(0, 2**32 - 1),
)
def test_jax_gemm_and_mm_dequant_property(platform, lead, N, K, with_bias, dtype, seed):
    rng = np.random.default_rng(seed)
    A = rng.integers(-127, 128, (*lead, K), dtype=np.int8)
    B = rng.integers(-127, 128, (N, K), dtype=np.int8)
    C = lj.int8_gemm(jnp.asarray(A), jnp.asarray(B))
    C_ref = (A.astype(np.int64).reshape(math.prod(lead), K) @ B.astype(np.int64).T).reshape(
        *lead, N
    )
    np.testing.assert_array_equal(np.asarray(C), C_ref)
    rs = np.asarray(rng.exponential(3, lead), np.float32).reshape(lead)
    cs = rng.exponential(0.1, N).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    out = lj.dequant_epilogue(
        C,
        jnp.asarray(rs),
        jnp.asarray(cs),
        None if bias is None else jnp.asarray(bias),
        dtype=JAX_DTYPES[dtype],
    )
    ref = dequant_epilogue_ref(C_ref, rs, cs, bias)
    d = np.abs(dequant_epilogue_ref(C_ref, rs, cs)) + (0 if bias is None else np.abs(bias))
    eps, tiny = DTYPES[dtype][1] / 2, DTYPES[dtype][3]
    assert np.all(np.abs(j64(out) - ref) <= 6 * 2.0**-24 * d + 2 * eps * np.abs(ref) + tiny)
    # ... and exactly the documented float32 evaluation order (cuda/numerics.h dequant).
    exact = jnp.asarray(dequant_epilogue_f32(C_ref, rs, cs, bias).astype(np.float32))
    np.testing.assert_array_equal(j64(out), j64(exact.astype(JAX_DTYPES[dtype])))


@PROFILE
@given(
    st.integers(0, 40),
    st.integers(1, 90),
    st.sampled_from(sorted(DTYPES)),
    st.integers(0, 2**32 - 1),
)
def test_jax_weight_quantization_property(platform, N, K, dtype, seed):
    """quantize_weight is the reference's row quantization; dequantize_weight its inverse."""
    rng = np.random.default_rng(seed)
    w = _values(rng, (N, K), rng.choice(["normal", "heavy", "zero_rows"]), 0.0, dtype)
    wj = _jax(w, dtype)
    CB, SCB = lj.quantize_weight(wj)
    q_ref, scale_ref, _ = quantize_rows_ref(j64(wj), 0.0)
    np.testing.assert_array_equal(np.asarray(SCB), scale_ref.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(CB), q_ref)
    back = j64(lj.dequantize_weight(CB, SCB, JAX_DTYPES[dtype]))
    ref = np.asarray(CB, np.float64) * np.asarray(SCB, np.float64)[:, None] / 127
    eps, tiny = DTYPES[dtype][1] / 2, DTYPES[dtype][3]
    assert np.all(np.abs(back - ref) <= (4 * 2.0**-24 + 2 * eps) * np.abs(ref) + tiny)


@PROFILE
@given(
    st.integers(0, 70),
    st.integers(0, 70),
    st.sampled_from(["col32", "col_turing", "col_ampere"]),
    st.integers(0, 2**32 - 1),
)
def test_jax_transform_property(platform, rows, cols, order, seed):
    from layout_reference import to_layout_ref as to_layout_reference

    a = np.random.default_rng(seed).integers(-128, 128, (rows, cols), dtype=np.int8)
    tiled = lj.transform_layout(jnp.asarray(a), order)
    np.testing.assert_array_equal(np.asarray(tiled), to_layout_reference(a, order))
    np.testing.assert_array_equal(
        np.asarray(lj.transform_layout(tiled, "row", order, (rows, cols))), a
    )


@PROFILE
@given(fp16_range())
def test_jax_fp16_range_property(platform, case):
    x, W, threshold = case
    CB, SCB = lj.quantize_weight(jnp.asarray(W))
    cb, scb = np.asarray(CB), np.asarray(SCB)
    xj = jnp.asarray(x)
    q, _, _ = lj.quantize_rows(xj, threshold)
    out = j64(lj.linear(xj, CB, SCB, None, threshold))
    ref = linear_ref(x, cb, scb, None, threshold)
    assert np.isfinite(out).all()
    assert np.all(
        np.abs(out - ref)
        <= linear_error_bound(x, cb, scb, ref, 2.0**-11, 2.0**-24, threshold, np.asarray(q))
    )

"""Property tests (hypothesis): lt8's ops against the float64 reference over shapes, dtypes,
thresholds and value distributions, including heavy tails, many or all outlier columns and
all-zero rows. Bounded for CI; LT8_HYPOTHESIS_EXAMPLES raises the count (the GPU script)."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lt8.torch  # noqa: E402,F401
from reference import grad_input_ref, linear_ref, quantize_rows_ref  # noqa: E402

EXAMPLES = int(os.environ.get("LT8_HYPOTHESIS_EXAMPLES", "25"))
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# (dtype, relative rounding, largest value used, absolute rounding of subnormal outputs)
DTYPES = {"f32": (torch.float32, 2.0**-24, 3.0e38, 2.0**-150), "f16": (torch.float16, 2.0**-11, 6.0e4, 2.0**-25),
          "bf16": (torch.bfloat16, 2.0**-8, 3.0e38, 2.0**-134)}


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
        x = np.sign(rng.standard_normal((M, K)) + 0.1) * (max(threshold, 1.0) + rng.exponential(5, (M, K)))
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
    diff = np.abs(q.numpy().astype(np.int32) - q_ref.astype(np.int32))
    assert diff.max(initial=0) <= 1
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
    out = torch.ops.lt8.int8_linear(x.to(device), CB.to(device), SCB.to(device),
                                    None if bias is None else bias.to(device), threshold).cpu()
    ref = linear_ref(f64(x), CB.numpy(), SCB.numpy(), None if bias is None else bias.numpy(), threshold)
    assert out.shape == (M, N) and out.dtype == x.dtype
    assert np.isfinite(f64(out)).all()
    # Bound: float32 accumulation (products summed in float32), one rounding to the output
    # dtype, and one int8 step of x at an inexact tie (float32 inputs only).
    Wd = np.abs(CB.numpy().astype(np.float64) * SCB.numpy()[:, None] / 127)
    S = np.abs(f64(x)) @ Wd.T
    # Float32 inputs: x * 127 is inexact, so an element within an ulp of a rounding tie may
    # quantize one step away from the float64 reference. Account for exactly those elements.
    q, scale, _ = torch.ops.lt8.quantize_rows(x, threshold)
    q_ref, _, _ = quantize_rows_ref(f64(x), threshold)
    steps = np.abs(q.numpy().astype(np.float64) - q_ref) * (scale.numpy().astype(np.float64)[:, None] / 127)
    flips = steps @ Wd.T
    tol = (K + 4) * 2.0**-23 * S + 2 * DTYPES[dtype][1] * np.abs(ref) + flips + DTYPES[dtype][3]
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
    C = torch.ops.lt8.int8_gemm(torch.from_numpy(A).to(device), torch.from_numpy(B).to(device)).cpu()
    np.testing.assert_array_equal(C.numpy(), A.astype(np.int64) @ B.astype(np.int64).T)

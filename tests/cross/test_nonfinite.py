"""NaN, +-inf, exact zeros and large magnitudes (docs/NUMERICS.md), in torch and JAX, on every
device, against the float64 reference (tests/reference.py implements the same policy).

The policy: a non-finite activation reaches exactly the output rows it touches (a non-finite
weight entry, exactly its output column); every other output element is bit for bit what the
same call gives with the non-finite entries replaced by finite values that keep the outlier
columns the same."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax_helpers import platform  # noqa: F401
from reference import (
    grad_input_ref,
    linear_error_bound,
    linear_ref,
    quantize_rows_ref,
    weight_linear_ref,
)

import lt8.jax as lj
import lt8.torch  # noqa: F401  (registers torch.ops.lt8)

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
JAX_DTYPES = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}
# Relative output rounding and the smallest normal of each dtype (absolute slack for subnormals).
EPS = {"f32": (2.0**-24, 2.0**-149), "f16": (2.0**-11, 2.0**-24), "bf16": (2.0**-8, 2.0**-133)}
INF = float("inf")
NONFINITE = {"nan": float("nan"), "inf": INF, "-inf": -INF}


# --- inputs --------------------------------------------------------------------------------------


def planted(rng, M: int, K: int, threshold: float, value: float):
    """(x, clean, bad_rows): activations below the threshold with one ordinary outlier column,
    the non-finite ``value`` planted in two rows (one of them inside the outlier column) and, for
    an infinity, a third row holding both +inf and -inf. ``clean`` replaces every non-finite
    entry by a finite value with the same outlier status (NaN and threshold-0 entries by 0,
    +-inf by +-2*threshold), so that every other row must come out bit-identical."""
    x = np.clip(rng.standard_normal((M, K)), -2, 2).astype(np.float32)
    out_col, c1, c2 = rng.choice(K, size=3, replace=False)
    rows = rng.choice(M, size=4, replace=False)
    x[rows[0], out_col] = 8.0  # an outlier when threshold > 0
    x[rows[1], c1] = value
    x[rows[2], out_col] = value
    bad = [rows[1], rows[2]]
    if np.isinf(value):
        x[rows[3], c1], x[rows[3], c2] = INF, -INF
        bad.append(rows[3])
    clean = x.copy()
    clean[~np.isfinite(x)] = 0.0
    if threshold > 0:
        clean[np.isposinf(x)] = 2 * threshold
        clean[np.isneginf(x)] = -2 * threshold
    bad_rows = np.zeros(M, bool)
    bad_rows[bad] = True
    return x, clean, bad_rows


def weight(rng, N: int, K: int, zero_at=None) -> np.ndarray:
    """A float32 (N, K) weight; ``zero_at`` columns get an exact 0 in row 0 (CB = 0 there, so an
    infinity meets a zero weight: NaN)."""
    W = (rng.standard_normal((N, K)) * 0.1).astype(np.float32)
    if zero_at is not None:
        W[0, zero_at] = 0.0
    return W


def assert_policy(out, out_clean, ref, bad_rows):
    """Rows hit by a non-finite value match the reference's NaN/+inf/-inf pattern exactly; the
    other rows are finite and bit-identical to the clean run."""
    out, out_clean, ref = (
        np.asarray(a, np.float64).reshape(len(bad_rows), -1) for a in (out, out_clean, ref)
    )
    ok = ~bad_rows
    assert np.isfinite(out[ok]).all(), "a non-finite value leaked into rows it does not touch"
    np.testing.assert_array_equal(
        out[ok], out_clean[ok], err_msg="rows without non-finite values changed"
    )
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        np.testing.assert_array_equal(
            test(out[bad_rows]), test(ref[bad_rows]), err_msg=f"{name} pattern"
        )
    assert not np.isfinite(ref[bad_rows]).any()  # the planted values reach every column


def t64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def j64(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)


def torch_weight(W: np.ndarray, device: str):
    CB, SCB, _ = torch.ops.lt8.quantize_rows(torch.from_numpy(W).to(device), 0.0)
    return CB, SCB


# --- non-finite activations: torch ---------------------------------------------------------------


@pytest.mark.parametrize("value", list(NONFINITE))
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("M", [5, 40])  # the GPU's GEMV (M <= 16) and GEMM paths
def test_torch_linear_nonfinite_activations(device, rng, value, threshold, dtype, M):
    K, N = 48, 24
    x, clean, bad = planted(rng, M, K, threshold, NONFINITE[value])
    W = weight(rng, N, K, zero_at=np.flatnonzero(~np.isfinite(x).all(axis=0)))
    CB, SCB = torch_weight(W, device)
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(device)
    xt, ct = (torch.from_numpy(a).to(TORCH_DTYPES[dtype]).to(device) for a in (x, clean))
    out = torch.ops.lt8.int8_linear(xt, CB, SCB, bias, threshold)
    out_clean = torch.ops.lt8.int8_linear(ct, CB, SCB, bias, threshold)
    ref = linear_ref(t64(xt), CB.cpu().numpy(), SCB.cpu().numpy(), bias.cpu().numpy(), threshold)
    assert_policy(t64(out), t64(out_clean), ref, bad)


@pytest.mark.parametrize("value", list(NONFINITE))
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize(
    "grad", [False, True], ids=["no_grad", "grad"]
)  # fast path / registered op
def test_torch_module_nonfinite_activations(device, rng, value, threshold, grad):
    K, N, M = 40, 16, 6
    x, clean, bad = planted(rng, M, K, threshold, NONFINITE[value])
    layer = lt8.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=threshold)
    layer.weight = lt8.nn.Int8Params(torch.from_numpy(weight(rng, N, K)), requires_grad=False)
    layer = layer.to(device)
    xt, ct = (torch.from_numpy(a).half().to(device).requires_grad_(grad) for a in (x, clean))
    with torch.set_grad_enabled(grad):
        out, out_clean = layer(xt), layer(ct)
    ref = linear_ref(
        t64(xt),
        layer.weight.cpu().numpy(),
        layer.weight.SCB.cpu().numpy(),
        t64(layer.bias),
        threshold,
    )
    assert_policy(t64(out), t64(out_clean), ref, bad)


@pytest.mark.parametrize("value", list(NONFINITE))
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_torch_weight_only_and_grad_input_nonfinite(device, rng, value, dtype):
    """The float paths (weight-only linear, input gradient) follow float arithmetic: the rows of
    x (of grad_out) that hold a non-finite value, and no others."""
    M, K, N = 7, 40, 24
    x, clean, bad = planted(rng, M, K, 0.0, NONFINITE[value])
    W = weight(rng, N, K, zero_at=np.flatnonzero(~np.isfinite(x).all(axis=0)))
    CB, SCB = torch_weight(W, device)
    xt, ct = (torch.from_numpy(a).to(TORCH_DTYPES[dtype]).to(device) for a in (x, clean))
    out = torch.ops.lt8.int8_weight_linear(xt, CB, SCB, None)
    out_clean = torch.ops.lt8.int8_weight_linear(ct, CB, SCB, None)
    assert_policy(
        t64(out),
        t64(out_clean),
        weight_linear_ref(t64(xt), CB.cpu().numpy(), SCB.cpu().numpy()),
        bad,
    )

    g, g_clean, g_bad = planted(rng, M, N, 0.0, NONFINITE[value])
    Wg = weight(rng, N, K)
    Wg[np.flatnonzero(~np.isfinite(g).all(axis=0)), 0] = 0.0  # grad meets a zero weight: NaN
    CB, SCB = torch_weight(Wg, device)
    gt, gc = (torch.from_numpy(a).to(TORCH_DTYPES[dtype]).to(device) for a in (g, g_clean))
    gx = torch.ops.lt8.int8_linear_grad_input(gt, CB, SCB)
    gx_clean = torch.ops.lt8.int8_linear_grad_input(gc, CB, SCB)
    assert_policy(
        t64(gx), t64(gx_clean), grad_input_ref(t64(gt), CB.cpu().numpy(), SCB.cpu().numpy()), g_bad
    )


# --- non-finite activations: JAX -------------------------------------------------------------------


@pytest.mark.parametrize("value", list(NONFINITE))
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", list(JAX_DTYPES))
def test_jax_linear_nonfinite_activations(platform, rng, value, threshold, dtype):
    M, K, N = 6, 48, 24
    x, clean, bad = planted(rng, M, K, threshold, NONFINITE[value])
    W = weight(rng, N, K, zero_at=np.flatnonzero(~np.isfinite(x).all(axis=0)))
    CB, SCB = lj.quantize_weight(jnp.asarray(W))
    bias = jnp.asarray(rng.standard_normal(N).astype(np.float32))
    f = jax.jit(lambda x: lj.linear(x, CB, SCB, bias, threshold))
    xj, cj = jnp.asarray(x, JAX_DTYPES[dtype]), jnp.asarray(clean, JAX_DTYPES[dtype])
    ref = linear_ref(j64(xj), np.asarray(CB), np.asarray(SCB), np.asarray(bias), threshold)
    assert_policy(j64(f(xj)), j64(f(cj)), ref, bad)

    out_w, out_w_clean = lj.weight_linear(xj, CB, SCB), lj.weight_linear(cj, CB, SCB)
    assert_policy(
        j64(out_w),
        j64(out_w_clean),
        weight_linear_ref(j64(xj), np.asarray(CB), np.asarray(SCB)),
        bad,
    )


@pytest.mark.parametrize("value", list(NONFINITE))
def test_jax_grad_input_nonfinite(platform, rng, value):
    M, K, N = 6, 40, 24
    g, g_clean, bad = planted(rng, M, N, 0.0, NONFINITE[value])
    W = weight(rng, N, K)
    W[np.flatnonzero(~np.isfinite(g).all(axis=0)), 0] = 0.0
    CB, SCB = lj.quantize_weight(jnp.asarray(W))
    x = jnp.zeros((M, K), jnp.float32)

    def grad_x(g):
        return jax.vjp(lambda x: lj.linear(x, CB, SCB, None, 6.0), x)[1](jnp.asarray(g))[0]

    assert_policy(
        j64(grad_x(g)),
        j64(grad_x(g_clean)),
        grad_input_ref(g, np.asarray(CB), np.asarray(SCB)),
        bad,
    )


# --- non-finite weights ----------------------------------------------------------------------------


def _nonfinite_weight(rng, N, K):
    W = weight(rng, N, K)
    clean = W.copy()
    cols = np.zeros(N, bool)
    for n, v in ((1, np.nan), (3, INF), (4, -INF)):
        W[n, rng.integers(K)] = v
        cols[n] = True
    return W, clean, cols


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_torch_nonfinite_weight_reaches_its_column_only(device, rng, threshold):
    """A weight row with NaN or +-inf quantizes to CB = 0 with a non-finite SCB: its output
    column is NaN for every row; the other columns are bit-identical to the clean weight's."""
    M, K, N = 9, 32, 8
    W, W_clean, cols = _nonfinite_weight(rng, N, K)
    CB, SCB = torch_weight(W, device)
    assert torch.all(CB[torch.from_numpy(cols).to(device)] == 0)
    assert not torch.isfinite(SCB[torch.from_numpy(cols).to(device)]).any()
    x, _, _ = planted(rng, M, K, threshold, 0.0)  # finite; one outlier column
    xt = torch.from_numpy(x).half().to(device)
    out = t64(torch.ops.lt8.int8_linear(xt, CB, SCB, None, threshold))
    out_clean = t64(torch.ops.lt8.int8_linear(xt, *torch_weight(W_clean, device), None, threshold))
    assert np.isnan(out[:, cols]).all()
    np.testing.assert_array_equal(out[:, ~cols], out_clean[:, ~cols])
    np.testing.assert_array_equal(
        np.isnan(out), np.isnan(linear_ref(x, CB.cpu().numpy(), SCB.cpu().numpy(), None, threshold))
    )


def test_jax_nonfinite_weight_reaches_its_column_only(platform, rng):
    M, K, N = 9, 32, 8
    W, W_clean, cols = _nonfinite_weight(rng, N, K)
    x, _, _ = planted(rng, M, K, 6.0, 0.0)
    CB, SCB = lj.quantize_weight(jnp.asarray(W))
    out = j64(lj.linear(jnp.asarray(x, jnp.float16), CB, SCB, None, 6.0))
    out_clean = j64(
        lj.linear(jnp.asarray(x, jnp.float16), *lj.quantize_weight(jnp.asarray(W_clean)), None, 6.0)
    )
    assert np.isnan(out[:, cols]).all()
    np.testing.assert_array_equal(out[:, ~cols], out_clean[:, ~cols])


# --- exact zeros -----------------------------------------------------------------------------------


def _with_zeros(rng, M, K, N):
    x = np.clip(rng.standard_normal((M, K)), -2, 2).astype(np.float32)
    x[0, 3] = 9.0  # an outlier column for threshold > 0
    zero_rows = np.zeros(M, bool)
    zero_rows[[1, M - 1]] = True
    x[zero_rows] = 0.0
    W = weight(rng, N, K)
    zero_cols = np.zeros(N, bool)
    zero_cols[[0, N // 2]] = True
    W[zero_cols] = 0.0
    return x, W, zero_rows, zero_cols


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_torch_zero_rows_and_columns_are_exact(device, rng, threshold, dtype, with_bias):
    """An all-zero activation row gives exactly the bias (0 without one); an all-zero weight row
    gives an output column of exactly the bias; zero gradient rows and zero weight columns give
    exact zeros in the input gradient."""
    M, K, N = 6, 40, 10
    x, W, zero_rows, zero_cols = _with_zeros(rng, M, K, N)
    CB, SCB = torch_weight(W, device)
    bias = (
        torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(device)
        if with_bias
        else None
    )
    expected = np.zeros(N) if bias is None else t64(bias.to(TORCH_DTYPES[dtype]))
    xt = torch.from_numpy(x).to(TORCH_DTYPES[dtype]).to(device)
    for out in (
        torch.ops.lt8.int8_linear(xt, CB, SCB, bias, threshold),
        torch.ops.lt8.int8_weight_linear(xt, CB, SCB, bias),
    ):
        out = t64(out)
        np.testing.assert_array_equal(
            out[zero_rows], np.broadcast_to(expected, (zero_rows.sum(), N))
        )
        np.testing.assert_array_equal(
            out[:, zero_cols], np.broadcast_to(expected[zero_cols], (M, zero_cols.sum()))
        )
    g = np.clip(rng.standard_normal((M, N)), -2, 2).astype(np.float32)
    g[zero_rows] = 0.0
    Wk = W.copy()
    Wk[:, [2, K - 1]] = 0.0  # zero weight columns: zero input-gradient columns
    CBk, SCBk = torch_weight(Wk, device)
    gx = t64(
        torch.ops.lt8.int8_linear_grad_input(
            torch.from_numpy(g).to(TORCH_DTYPES[dtype]).to(device), CBk, SCBk
        )
    )
    assert np.all(gx[zero_rows] == 0) and np.all(gx[:, [2, K - 1]] == 0)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", list(JAX_DTYPES))
def test_jax_zero_rows_and_columns_are_exact(platform, rng, threshold, dtype):
    M, K, N = 6, 40, 10
    x, W, zero_rows, zero_cols = _with_zeros(rng, M, K, N)
    CB, SCB = lj.quantize_weight(jnp.asarray(W))
    bias = jnp.asarray(rng.standard_normal(N).astype(np.float32))
    expected = j64(bias.astype(JAX_DTYPES[dtype]))
    xj = jnp.asarray(x, JAX_DTYPES[dtype])
    for out in (lj.linear(xj, CB, SCB, bias, threshold), lj.weight_linear(xj, CB, SCB, bias)):
        out = j64(out)
        np.testing.assert_array_equal(
            out[zero_rows], np.broadcast_to(expected, (zero_rows.sum(), N))
        )
        np.testing.assert_array_equal(
            out[:, zero_cols], np.broadcast_to(expected[zero_cols], (M, zero_cols.sum()))
        )


# --- large magnitudes ------------------------------------------------------------------------------


def near_max(rng, shape, top: float) -> np.ndarray:
    """Values of magnitude in [0.9 * top, top], random signs."""
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.9 * top, top, size=shape)).astype(
        np.float32
    )


def small_weight(rng, N, K) -> np.ndarray:
    """|W| <= 0.9 / K: a row of near-maximal activations sums to less than their magnitude."""
    return (rng.uniform(-0.9, 0.9, (N, K)) / K).astype(np.float32)


@pytest.mark.parametrize(
    "threshold", [0.0, 6.0, 7e4], ids=["no_outliers", "all_outliers", "above_fp16_max"]
)
@pytest.mark.parametrize("M", [3, 40])
def test_torch_fp16_near_max_does_not_overflow(device, rng, threshold, M):
    """fp16 activations up to 65504: the int8 path, the weight-only path and the input gradient
    stay finite and match the reference wherever the true result is in fp16's range."""
    K, N = 64, 32
    x = torch.from_numpy(near_max(rng, (M, K), 65504.0)).half().to(device)
    CB, SCB = torch_weight(small_weight(rng, N, K), device)
    cb, scb = CB.cpu().numpy(), SCB.cpu().numpy()
    q, _, _ = torch.ops.lt8.quantize_rows(x, threshold)
    out = t64(torch.ops.lt8.int8_linear(x, CB, SCB, None, threshold))
    ref = linear_ref(t64(x), cb, scb, None, threshold)
    assert np.isfinite(ref).all() and np.abs(ref).max() < 65504
    assert np.isfinite(out).all()
    assert np.all(
        np.abs(out - ref)
        <= linear_error_bound(t64(x), cb, scb, ref, *EPS["f16"], threshold, q.cpu().numpy())
    )
    out_w = t64(torch.ops.lt8.int8_weight_linear(x, CB, SCB, None))
    ref_w = weight_linear_ref(t64(x), cb, scb)
    assert np.isfinite(out_w).all()
    assert np.all(np.abs(out_w - ref_w) <= linear_error_bound(t64(x), cb, scb, ref_w, *EPS["f16"]))
    g = torch.from_numpy(near_max(rng, (M, N), 65504.0)).half().to(device)
    CBg, SCBg = torch_weight(
        small_weight(rng, K, N).T.copy(), device
    )  # |W| <= 0.9 / N down each column
    gx = t64(torch.ops.lt8.int8_linear_grad_input(g, CBg, SCBg))
    ref_g = grad_input_ref(t64(g), CBg.cpu().numpy(), SCBg.cpu().numpy())
    assert np.isfinite(gx).all() and np.abs(ref_g).max() < 65504
    np.testing.assert_allclose(gx, ref_g, rtol=2 * EPS["f16"][0], atol=N * 2.0**-23 * 65504)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_torch_module_fp16_near_max(device, rng, threshold):
    K, N = 64, 16
    layer = lt8.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=threshold)
    layer.weight = lt8.nn.Int8Params(torch.from_numpy(small_weight(rng, N, K)), requires_grad=False)
    layer.bias = torch.nn.Parameter(torch.zeros(N))
    layer = layer.to(device).half()
    x = torch.from_numpy(near_max(rng, (5, K), 65504.0)).half().to(device)
    with torch.no_grad():
        out = t64(layer(x))
    ref = linear_ref(
        t64(x), layer.weight.cpu().numpy(), layer.weight.SCB.cpu().numpy(), None, threshold
    )
    assert np.isfinite(out).all()
    q, _, _ = torch.ops.lt8.quantize_rows(x, threshold)
    cb, scb = layer.weight.cpu().numpy(), layer.weight.SCB.cpu().numpy()
    bound = linear_error_bound(t64(x), cb, scb, ref, *EPS["f16"], threshold, q.cpu().numpy())
    assert np.all(np.abs(out - ref) <= bound)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_jax_fp16_near_max_does_not_overflow(platform, rng, threshold):
    M, K, N = 5, 64, 32
    x = jnp.asarray(near_max(rng, (M, K), 65504.0), jnp.float16)
    CB, SCB = lj.quantize_weight(jnp.asarray(small_weight(rng, N, K)))
    cb, scb = np.asarray(CB), np.asarray(SCB)
    q, _, _ = lj.quantize_rows(x, threshold)
    out = j64(jax.jit(lambda x: lj.linear(x, CB, SCB, None, threshold))(x))
    ref = linear_ref(j64(x), cb, scb, None, threshold)
    assert np.isfinite(out).all()
    assert np.all(
        np.abs(out - ref)
        <= linear_error_bound(j64(x), cb, scb, ref, *EPS["f16"], threshold, np.asarray(q))
    )
    out_w = j64(lj.weight_linear(x, CB, SCB))
    assert np.isfinite(out_w).all()


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_huge_activations_quantize_correctly(device, rng, dtype):
    K, N = 16, 8
    x = torch.from_numpy(
        near_max(rng, (4, K), 3.0e38) * rng.uniform(0.01, 1, (4, K)).astype(np.float32)
    )
    x = x.to(TORCH_DTYPES[dtype]).to(device)
    CB, SCB = torch_weight(small_weight(rng, N, K), device)
    q, _, _ = torch.ops.lt8.quantize_rows(x, 0.0)
    q_ref, _, _ = quantize_rows_ref(t64(x))
    np.testing.assert_array_equal(q.cpu().numpy(), q_ref)
    out = t64(torch.ops.lt8.int8_linear(x, CB, SCB, None, 0.0))
    ref = linear_ref(t64(x), CB.cpu().numpy(), SCB.cpu().numpy(), None, 0.0)
    assert np.all(
        np.abs(out - ref)
        <= linear_error_bound(
            t64(x), CB.cpu().numpy(), SCB.cpu().numpy(), ref, *EPS[dtype], 0.0, q.cpu().numpy()
        )
    )


def test_weight_only_path_does_not_overflow_before_scaling(device, rng):
    K, N = 64, 8
    x = torch.from_numpy(near_max(rng, (3, K), 1.0e36)).to(device)
    W = (rng.uniform(-1, 1, (N, K)) * 1e-34).astype(np.float32)
    CB, SCB = torch_weight(W, device)
    out = t64(torch.ops.lt8.int8_weight_linear(x, CB, SCB, None))
    ref = weight_linear_ref(t64(x), CB.cpu().numpy(), SCB.cpu().numpy())
    assert np.abs(ref).max() < 65504
    cb, scb = CB.cpu().numpy(), SCB.cpu().numpy()
    assert np.all(
        np.abs(out - ref) <= linear_error_bound(t64(x), cb, scb, ref, 2.0**-24, 2.0**-149)
    )

"""lt8's int8 rounding and float32 epilogues, bit for bit, in torch and JAX.

Every op that quantizes must give exactly ``reference.quantize_rows_ref``'s int8 rows (the
formula of cuda/numerics.h, reproduced in float64 with its float32 steps): on random inputs
(with an entry planted exactly at the threshold) and on deterministic rows that pin the
rounding (exact .5 ties decided half to even, ties that a per-element factor 127 / absmax would
flip, absmax entries, all-zero and subnormal rows), at threshold 0, 6 and inf. The epilogues
must equal ``dequant_epilogue_f32`` / ``linear_f32`` (the documented float32 evaluation order)
bit for bit. Small exact cases, not sweeps: each one fails on a wrong rounding, a wrong outlier
comparison or a reordered product.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import (
    dequant_epilogue_f32,
    dequantize_rows_f32,
    linear_f32,
    quantize_rows_double_rounding,
    quantize_rows_ref,
    tie_rows,
)

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax_helpers import platform  # noqa: E402,F401

import lt8.functional as BF  # noqa: E402  (bitsandbytes' names)
import lt8.torch  # noqa: E402,F401  (registers torch.ops.lt8)
import lt8.torch.functional as TF  # noqa: E402  (lt8's own names)
from lt8.jax import ops as jops  # noqa: E402

DTYPES = ["float32", "float16", "bfloat16"]
TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
JAX = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


def t(a: np.ndarray, dtype: str, device: str = "cpu") -> torch.Tensor:
    """float64 values already on ``dtype``'s grid as a torch tensor (asserts the cast is exact)."""
    out = torch.from_numpy(np.asarray(a, np.float64)).to(TORCH[dtype]).to(device)
    np.testing.assert_array_equal(out.cpu().double().numpy(), a)
    return out


def j(a: np.ndarray, dtype: str) -> jax.Array:
    out = jnp.asarray(np.asarray(a, np.float32), JAX[dtype])
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32), np.float64), a)
    return out


def n64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        return (a.float() if a.is_floating_point() else a).numpy().astype(np.float64)
    a = jnp.asarray(a)
    return np.asarray(
        a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a, np.float64
    )


def on_grid(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (round to nearest even), as float64."""
    return torch.from_numpy(np.asarray(a, np.float32)).to(TORCH[dtype]).double().numpy()


def random_rows(rng, shape, dtype: str, threshold: float) -> np.ndarray:
    """N(0, 2) activations on ``dtype``'s grid; for threshold > 0 (finite) entries exactly at
    +-threshold, one just below it and a few beyond it, in distinct columns."""
    x = on_grid(rng.standard_normal(shape) * 2.0, dtype)
    if 0 < threshold < np.inf:
        x = np.clip(x, -0.9 * threshold, 0.9 * threshold)
        flat = x.reshape(-1, shape[-1])
        below = np.nextafter(np.float32(threshold), np.float32(0))
        below = on_grid(below, dtype) if on_grid(below, dtype) < threshold else 0.9 * threshold
        cols = rng.choice(shape[-1], size=5, replace=False)
        rows = rng.integers(0, flat.shape[0], size=5)
        flat[rows, cols] = [threshold, -threshold, below, 2.5 * threshold, -9.0 * threshold]
        x = on_grid(flat.reshape(shape), dtype)
    return x


def assert_rows_equal(q, scale, mask, x: np.ndarray, threshold: float) -> None:
    q_ref, scale_ref, mask_ref = quantize_rows_ref(x, threshold)
    if mask is not None:
        np.testing.assert_array_equal(np.asarray(n64(mask), bool), mask_ref, err_msg="mask")
    np.testing.assert_array_equal(n64(scale), scale_ref, err_msg="row scale")
    bad = np.argwhere(n64(q) != q_ref)
    assert bad.size == 0, (
        f"{len(bad)} int8 elements differ from the reference, e.g. at {bad[:4].tolist()}: "
        f"x={x[tuple(bad[:4].T)].tolist()} lt8={n64(q)[tuple(bad[:4].T)].tolist()} "
        f"ref={q_ref[tuple(bad[:4].T)].tolist()}"
    )


# --- every quantizing op equals the reference ---------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 6.0, np.inf])
def test_torch_int8_rows_equal_reference(device, rng, dtype, threshold):
    x = random_rows(rng, (2, 9, 70), dtype, threshold)
    assert_rows_equal(*torch.ops.lt8.quantize_rows(t(x, dtype, device), threshold), x, threshold)
    assert_rows_equal(*TF.quantize_rows(t(x, dtype, device), threshold), x, threshold)
    flat = x.reshape(18, 70)
    q, stats, cols = BF.int8_vectorwise_quant(t(flat, dtype, device), threshold)
    mask_ref = quantize_rows_ref(flat, threshold)[2]
    assert_rows_equal(q, stats, None, flat, threshold)
    if threshold > 0:
        np.testing.assert_array_equal(n64(cols), np.flatnonzero(mask_ref))
    q_row, q_col, r_stats, c_stats, _ = BF.double_quant(t(flat, dtype, device), threshold=threshold)
    assert_rows_equal(q_row, r_stats, None, flat, threshold)
    # Column-wise: the transposed matrix quantized without outliers, outlier columns zeroed.
    qc_ref, cs_ref, _ = quantize_rows_ref(flat.T, 0.0)
    np.testing.assert_array_equal(n64(c_stats), cs_ref)
    np.testing.assert_array_equal(n64(q_col), np.where(mask_ref[None, :], 0, qc_ref.T))


@pytest.mark.parametrize("dtype", DTYPES + ["float64"])
def test_torch_weight_quantization_equals_reference(device, rng, dtype):
    """quantize_weight and Int8Params (the weight of Linear8bitLt, quantized on its first move
    to a device; float64 weights are read as float32) round exactly like the reference."""
    W = rng.standard_normal((24, 50)) * 0.05
    W = W if dtype == "float64" else on_grid(W, dtype)
    Wt = torch.from_numpy(W).to(getattr(torch, dtype))
    CB_ref, SCB_ref, _ = quantize_rows_ref(W.astype(np.float32).astype(np.float64))
    if dtype != "float64":
        for quantize_weight in (TF.quantize_weight, BF.quantize_weight):
            CB, SCB = quantize_weight(Wt.to(device))
            np.testing.assert_array_equal(n64(CB), CB_ref)
            np.testing.assert_array_equal(n64(SCB), SCB_ref)
    layer = lt8.nn.Linear8bitLt(50, 24, bias=False, has_fp16_weights=False)
    layer.weight = lt8.nn.Int8Params(Wt.clone(), requires_grad=False)
    layer = layer.to(device)
    np.testing.assert_array_equal(n64(layer.weight.data), CB_ref)
    np.testing.assert_array_equal(n64(layer.weight.SCB), SCB_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 6.0, np.inf])
def test_jax_int8_rows_equal_reference(platform, rng, dtype, threshold):  # noqa: F811
    x = random_rows(rng, (2, 9, 70), dtype, threshold)
    assert_rows_equal(*jops.quantize_rows(j(x, dtype), threshold), x, threshold)
    jitted = jax.jit(lambda a: jops.quantize_rows(a, threshold))
    assert_rows_equal(*jitted(j(x, dtype)), x, threshold)
    W = on_grid(rng.standard_normal((24, 50)) * 0.05, dtype)
    CB_ref, SCB_ref, _ = quantize_rows_ref(W)
    for CB, SCB in (jops.quantize_weight(j(W, dtype)), jops.quantize_kernel(j(W.T.copy(), dtype))):
        np.testing.assert_array_equal(n64(CB), CB_ref)
        np.testing.assert_array_equal(n64(SCB), SCB_ref)


# --- deterministic rounding cases -----------------------------------------------------------


def _check_tie_rows_are_discriminating(x: np.ndarray) -> None:
    """The cases must tell the documented formula apart from its usual mistakes."""
    q_ref, scale, _ = quantize_rows_ref(x)
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    exact = x * 127.0 / safe  # x * 127 is exact in float64; ties are exact below
    tie = np.abs(exact - np.trunc(exact)) == 0.5
    assert (tie & (np.trunc(exact) % 2 == 0)).any() and (tie & (np.trunc(exact) % 2 != 0)).any()
    assert (quantize_rows_double_rounding(x) != q_ref).sum() >= 10, "needs double-rounding flips"
    assert (np.abs(q_ref) == 127).sum() >= 2 * (x.shape[0] - 2)
    assert (scale == 0).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_rounding_ties_and_boundaries(device, dtype):
    x = tie_rows(dtype)
    _check_tie_rows_are_discriminating(x)
    xt = t(x, dtype, device)
    assert_rows_equal(*torch.ops.lt8.quantize_rows(xt, 0.0), x, 0.0)
    # The same rows inside the fused op: exact float32 result (an error in one int8 element
    # moves an output by a whole step of the weight).
    W = np.tile(np.arange(-31, 33, dtype=np.int8)[None, :], (5, 1))
    CB, SCB = (
        torch.from_numpy(W).to(device),
        torch.tensor([1.0, 0.5, 3.0, 127.0, 0.25], device=device),
    )
    # (Without the tiny row: its outputs are float32 subnormals, which XLA's CPU flushes.)
    out = torch.ops.lt8.int8_linear(xt[:-1], CB, SCB, None, 0.0)
    ref = linear_f32(x[:-1], W, n64(SCB))
    np.testing.assert_array_equal(n64(out), on_grid(ref, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_jax_rounding_ties_and_boundaries(platform, dtype):  # noqa: F811
    x = tie_rows(dtype)
    _check_tie_rows_are_discriminating(x)
    assert_rows_equal(*jops.quantize_rows(j(x, dtype), 0.0), x, 0.0)
    W = np.tile(np.arange(-31, 33, dtype=np.int8)[None, :], (5, 1))
    SCB = np.array([1.0, 0.5, 3.0, 127.0, 0.25], np.float32)
    out = jops.linear(j(x[:-1], dtype), jnp.asarray(W), jnp.asarray(SCB), None, 0.0)
    np.testing.assert_array_equal(n64(out), on_grid(linear_f32(x[:-1], W, SCB), dtype))


def _threshold_rows(dtype: str, threshold: float) -> np.ndarray:
    """Columns 0..2 hold exactly +threshold, -threshold and the largest value below it (each in
    a different row); column 3 holds a value above it; the rest is small."""
    below = on_grid(np.nextafter(np.float32(threshold), np.float32(0)), dtype)
    below = below if below < threshold else on_grid(threshold * 0.99, dtype)
    x = on_grid(np.linspace(-0.5, 0.5, 4 * 16).reshape(4, 16) * threshold, dtype)
    x[0, 0], x[1, 1], x[2, 2], x[3, 3] = threshold, -threshold, below, 2 * threshold
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [6.0, 1.5, 0.75])
def test_torch_outlier_threshold_is_inclusive(device, rng, dtype, threshold):
    x = _threshold_rows(dtype, threshold)
    q, scale, mask = torch.ops.lt8.quantize_rows(t(x, dtype, device), threshold)
    assert n64(mask)[:4].tolist() == [1, 1, 0, 1], "|x| == threshold is an outlier, just below not"
    assert_rows_equal(q, scale, mask, x, threshold)
    W = rng.integers(-127, 128, (6, 16)).astype(np.int8)
    SCB = rng.uniform(0.5, 2, 6).astype(np.float32)
    bias = on_grid(rng.standard_normal(6), dtype)
    out = torch.ops.lt8.int8_linear(
        t(x, dtype, device), torch.from_numpy(W).to(device), torch.from_numpy(SCB).to(device),
        t(bias, dtype, device), threshold,
    )  # fmt: skip
    np.testing.assert_array_equal(n64(out), on_grid(linear_f32(x, W, SCB, bias, threshold), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [6.0, 1.5, 0.75])
def test_jax_outlier_threshold_is_inclusive(platform, rng, dtype, threshold):  # noqa: F811
    x = _threshold_rows(dtype, threshold)
    q, scale, mask = jops.quantize_rows(j(x, dtype), threshold)
    assert n64(mask)[:4].tolist() == [1, 1, 0, 1], "|x| == threshold is an outlier, just below not"
    assert_rows_equal(q, scale, mask, x, threshold)
    W = rng.integers(-127, 128, (6, 16)).astype(np.int8)
    SCB = rng.uniform(0.5, 2, 6).astype(np.float32)
    bias = on_grid(rng.standard_normal(6), dtype)
    out = jops.linear(j(x, dtype), jnp.asarray(W), jnp.asarray(SCB), j(bias, dtype), threshold)
    np.testing.assert_array_equal(n64(out), on_grid(linear_f32(x, W, SCB, bias, threshold), dtype))


def test_threshold_inf_makes_only_infinities_outliers(device, rng):
    """threshold=inf (documented as allowed): finite values, even fp16's largest, are regular;
    the result equals threshold 0's bit for bit; a +-inf entry is an outlier column."""
    x = on_grid(rng.standard_normal((3, 20)), "float16")
    x[0, 5], x[2, 7] = 65504.0, -65504.0
    W = rng.integers(-127, 128, (4, 20)).astype(np.int8)
    SCB = rng.uniform(0.5, 2, 4).astype(np.float32)
    args = (torch.from_numpy(W).to(device), torch.from_numpy(SCB).to(device), None)
    xt = t(x, "float16", device)
    q, scale, mask = torch.ops.lt8.quantize_rows(xt, float("inf"))
    assert not n64(mask).any()
    assert_rows_equal(q, scale, mask, x, np.inf)
    out = torch.ops.lt8.int8_linear(xt, *args, float("inf"))
    assert torch.equal(out, torch.ops.lt8.int8_linear(xt, *args, 0.0))
    np.testing.assert_array_equal(n64(out), on_grid(linear_f32(x, W, SCB, None, np.inf), "float16"))
    jout = jops.linear(j(x, "float16"), jnp.asarray(W), jnp.asarray(SCB), None, float("inf"))
    np.testing.assert_array_equal(n64(jout), n64(out))
    x[1, 3] = np.inf
    mask = torch.ops.lt8.quantize_rows(t(x, "float16", device), float("inf"))[2]
    assert n64(mask).nonzero()[0].tolist() == [3]
    jmask = jops.quantize_rows(j(x, "float16"), float("inf"))[2]
    assert np.asarray(jmask).nonzero()[0].tolist() == [3]


# --- float32 epilogues, bit for bit ----------------------------------------------------------


def _epilogue_inputs(rng, dtype):
    M, N = 9, 70
    C = rng.integers(-(2**26), 2**26, (M, N)).astype(np.int32)  # beyond 2^24: float(C) rounds
    rs = rng.uniform(0.1, 8, M).astype(np.float32)
    cs = rng.uniform(0.01, 2, N).astype(np.float32)
    bias = on_grid(rng.standard_normal(N), dtype)
    return C, rs, cs, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_torch_epilogue_bit_exact(device, rng, dtype, with_bias):
    C, rs, cs, bias = _epilogue_inputs(rng, dtype)
    b = t(bias, dtype, device) if with_bias else None
    out = torch.ops.lt8.dequant_epilogue(
        *(torch.from_numpy(a).to(device) for a in (C, rs, cs)), b, TORCH[dtype]
    )
    ref = dequant_epilogue_f32(C, rs, cs, bias if with_bias else None)
    np.testing.assert_array_equal(n64(out), on_grid(ref, dtype))
    q = rng.integers(-127, 128, (9, 70)).astype(np.int8)
    deq = BF.int8_vectorwise_dequant(
        torch.from_numpy(q).to(device), torch.from_numpy(rs).to(device)
    )
    np.testing.assert_array_equal(n64(deq), dequantize_rows_f32(q, rs))
    deq = TF.dequantize_rows(torch.from_numpy(q).to(device), torch.from_numpy(rs).to(device))
    np.testing.assert_array_equal(n64(deq), dequantize_rows_f32(q, rs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_jax_epilogue_bit_exact(platform, rng, dtype, with_bias):  # noqa: F811
    C, rs, cs, bias = _epilogue_inputs(rng, dtype)
    b = j(bias, dtype) if with_bias else None
    out = jops.dequant_epilogue(jnp.asarray(C), jnp.asarray(rs), jnp.asarray(cs), b, JAX[dtype])
    ref = dequant_epilogue_f32(C, rs, cs, bias if with_bias else None)
    np.testing.assert_array_equal(n64(out), on_grid(ref, dtype))
    q = rng.integers(-127, 128, (9, 70)).astype(np.int8)
    deq = jops.dequantize_rows(jnp.asarray(q), jnp.asarray(rs))
    np.testing.assert_array_equal(n64(deq), dequantize_rows_f32(q, rs))
    Wd = jops.dequantize_weight(jnp.asarray(q), jnp.asarray(rs), jnp.float32)
    np.testing.assert_array_equal(n64(Wd), dequantize_rows_f32(q, rs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_fused_linear_bit_exact_in_both_frameworks(device, rng, dtype, threshold):
    """The fused op is the documented float32 evaluation (int32 product, dequant, outlier columns
    in ascending order, bias, one rounding to the dtype), in torch and JAX alike."""
    x = random_rows(rng, (2, 5, 67), dtype, threshold)
    Wf = rng.standard_normal((33, 67)) * 0.05
    CB, SCB, _ = quantize_rows_ref(Wf)
    SCB = SCB.astype(np.float32)
    bias = on_grid(rng.standard_normal(33), dtype)
    ref = on_grid(linear_f32(x, CB, SCB, bias, threshold), dtype)
    out = torch.ops.lt8.int8_linear(
        t(x, dtype, device), torch.from_numpy(CB).to(device), torch.from_numpy(SCB).to(device),
        t(bias, dtype, device), threshold,
    )  # fmt: skip
    np.testing.assert_array_equal(n64(out), ref)
    jout = jops.linear(j(x, dtype), jnp.asarray(CB), jnp.asarray(SCB), j(bias, dtype), threshold)
    np.testing.assert_array_equal(n64(jout), ref)

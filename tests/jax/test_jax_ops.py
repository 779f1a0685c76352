"""lt8.jax.ops against the float64 numpy reference (tests/reference.py), on every JAX platform:
quantization, the int8 GEMM pieces, the fused linear op and its VJP, the training variant, and
their behaviour under jit, vmap, checkpoint, leading batch dims and empty batches."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_helpers import DTYPE_IDS, DTYPES, activations, f64, int8_weight, platform, rel_eps  # noqa: F401
from layout_reference import to_layout_ref
from reference import (
    dequant_epilogue_f32,
    dequantize_rows_f32,
    grad_input_ref,
    linear_error_bound,
    linear_ref,
    quantize_rows_ref,
    weight_linear_ref,
)

from lt8.core import layouts as L
from lt8.jax import ops


def linear_bound(dtype, ref, x, CB, SCB, threshold) -> np.ndarray:
    """Elementwise bound on |lt8 - reference| from the reference alone: the int8 rows of x must
    equal the reference quantizer's (checked), then float32 accumulation and one rounding to
    ``dtype`` (``rel_eps`` is a few ulps for float32, half an ulp else)."""
    q, _, _ = ops.quantize_rows(jnp.asarray(x.astype(np.float32), dtype), threshold)
    return linear_error_bound(x, CB, SCB, ref, rel_eps(dtype) / 2, 0.0, threshold, np.asarray(q))


# --- quantization -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("shape", [(7, 33), (2, 3, 40), (1, 300)])
def test_vectorwise_quant_matches_reference(platform, rng, dtype, threshold, shape):
    x = activations(rng, shape, threshold, dtype=dtype)
    x = jnp.concatenate(
        [x, jnp.zeros((*shape[:-2], 1, shape[-1]), dtype)], axis=-2
    )  # an all-zero row
    q, scale, mask = ops.quantize_rows(x, threshold)
    q_ref, scale_ref, mask_ref = quantize_rows_ref(f64(x), threshold)
    assert (q.dtype, q.shape) == (jnp.int8, x.shape)
    assert (scale.dtype, scale.shape) == (jnp.float32, x.shape[:-1])
    assert (mask.dtype, mask.shape) == (jnp.bool_, x.shape[-1:])
    np.testing.assert_array_equal(np.asarray(mask), mask_ref)
    np.testing.assert_array_equal(np.asarray(scale), scale_ref.astype(np.float32))
    # The reference reproduces the kernel's float32 formula: every int8 element is equal.
    np.testing.assert_array_equal(np.asarray(q), q_ref)
    assert np.all(np.asarray(q)[..., -1, :] == 0) and np.all(np.asarray(scale)[..., -1] == 0)
    if threshold > 0:
        assert mask_ref.any(), "the input generator must plant outliers"
        assert np.all(np.asarray(q)[..., mask_ref] == 0)


def test_vectorwise_dequant(platform, rng):
    q = jnp.asarray(rng.integers(-127, 128, size=(3, 5, 16)), jnp.int8)
    s = jnp.asarray(rng.uniform(0, 4, size=(3, 5)), jnp.float32)
    out = ops.dequantize_rows(q, s)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(f64(out), dequantize_rows_f32(np.asarray(q), np.asarray(s)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_quantize_weight_roundtrip(platform, rng, dtype):
    w = jnp.asarray(rng.standard_normal((24, 40)), dtype)
    CB, SCB = ops.quantize_weight(w)
    CB_ref, SCB_ref, _ = quantize_rows_ref(f64(w), 0.0)
    np.testing.assert_array_equal(np.asarray(SCB), SCB_ref.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(CB), CB_ref)
    W = ops.dequantize_weight(CB, SCB, jnp.float32)
    np.testing.assert_array_equal(f64(W), dequantize_rows_f32(CB_ref, SCB_ref))
    assert ops.dequantize_weight(CB, SCB, dtype).dtype == dtype
    # Every element within half a step of its row (exact ties reach it; W is rounded to float32).
    assert np.all(np.abs(f64(W) - f64(w)) <= f64(SCB)[:, None] / 254 + 2.0**-22 * np.abs(f64(W)))


# --- int8 GEMM pieces -------------------------------------------------------------------------


@pytest.mark.parametrize("a_shape,N", [((5, 7), 9), ((2, 3, 33), 17), ((0, 8), 4)])
def test_int8_gemm_exact(platform, rng, a_shape, N):
    A = rng.integers(-127, 128, size=a_shape).astype(np.int8)
    B = rng.integers(-127, 128, size=(N, a_shape[-1])).astype(np.int8)
    C = ops.int8_gemm(jnp.asarray(A), jnp.asarray(B))
    assert C.dtype == jnp.int32 and C.shape == (*a_shape[:-1], N)
    np.testing.assert_array_equal(np.asarray(C), A.astype(np.int64) @ B.astype(np.int64).T)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_mm_dequant(platform, rng, dtype, with_bias):
    C = rng.integers(-(2**20), 2**20, size=(2, 6, 10)).astype(np.int32)
    rs = rng.uniform(0.1, 3, size=(2, 6)).astype(np.float32)
    cs = rng.uniform(0.1, 3, size=10).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32) if with_bias else None
    out = ops.dequant_epilogue(
        jnp.asarray(C),
        jnp.asarray(rs),
        jnp.asarray(cs),
        None if bias is None else jnp.asarray(bias),
        dtype=dtype,
    )
    # The documented float32 evaluation order (cuda/numerics.h dequant), bit for bit.
    ref = dequant_epilogue_f32(C, rs, cs, bias)
    assert out.dtype == dtype and out.shape == C.shape
    np.testing.assert_array_equal(f64(out), f64(jnp.asarray(ref.astype(np.float32), dtype)))


def test_int8_pieces_compose_to_linear_without_outliers(platform, rng):
    x = activations(rng, (6, 48), 0.0)
    _, CB, SCB = int8_weight(rng, 20, 48)
    q, rs, _ = ops.quantize_rows(x)
    piecewise = ops.dequant_epilogue(ops.int8_gemm(q, CB), rs, SCB, dtype=jnp.float32)
    np.testing.assert_allclose(
        f64(piecewise), f64(ops.linear(x, CB, SCB, threshold=0.0)), rtol=1e-6, atol=1e-6
    )


# --- the fused linear op ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("shape,N", [((4, 64), 48), ((2, 5, 33), 17), ((1, 3, 2, 40), 9)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_reference(platform, rng, dtype, threshold, shape, N, with_bias):
    W, CB, SCB = int8_weight(rng, N, shape[-1])
    bias = jnp.asarray(rng.standard_normal(N), jnp.float32) if with_bias else None
    x = activations(rng, shape, threshold, dtype=dtype)
    out = ops.linear(x, CB, SCB, bias, threshold)
    ref = linear_ref(f64(x), CB, SCB, None if bias is None else f64(bias), threshold)
    assert out.dtype == dtype and out.shape == (*shape[:-1], N)
    assert np.all(np.abs(f64(out) - ref) <= linear_bound(dtype, ref, f64(x), CB, SCB, threshold))


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_linear_close_to_float_dense(platform, rng, threshold):
    """Against nn.Dense-style float32 x @ W.T: the error stays inside the bound of int8 rounding
    (half a step of x's row absmax and of W's row absmax per product term)."""
    M, K, N = 16, 256, 64
    W, CB, SCB = int8_weight(rng, N, K)
    x = activations(rng, (M, K), 6.0, n_outlier_cols=4)
    out = f64(ops.linear(x, CB, SCB, None, threshold))
    xf = f64(x)
    exact = xf @ W.astype(np.float64).T
    sx, sw = np.abs(xf).max(1, keepdims=True), np.abs(W).max(1)[None, :]
    bound = (
        sw * np.abs(xf).sum(1, keepdims=True) + sx * np.abs(W).sum(1)[None, :]
    ) / 254 + K * sx * sw / 254**2
    assert np.all(np.abs(out - exact) <= bound * 1.001 + 1e-5)
    rel = np.linalg.norm(out - exact) / np.linalg.norm(exact)
    assert rel < 0.03
    if threshold > 0:  # the decomposition must help when outliers are present
        plain = f64(ops.linear(x, CB, SCB, None, 0.0))
        assert rel < np.linalg.norm(plain - exact) / np.linalg.norm(exact)


def test_weight_linear_matches_reference(platform, rng):
    W, CB, SCB = int8_weight(rng, 12, 40)
    x = activations(rng, (3, 4, 40), 6.0)
    bias = jnp.asarray(rng.standard_normal(12), jnp.float32)
    out = ops.weight_linear(x, CB, SCB, bias)
    ref = weight_linear_ref(f64(x), CB, SCB, f64(bias))
    np.testing.assert_allclose(f64(out), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    r = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    gx = jax.grad(lambda x: jnp.sum(ops.weight_linear(x, CB, SCB, bias) * r))(x)
    np.testing.assert_allclose(f64(gx), grad_input_ref(f64(r), CB, SCB), rtol=0, atol=1e-5)


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bias_dtype", [jnp.float32, jnp.bfloat16], ids=["bias_f32", "bias_bf16"])
def test_linear_vjp_matches_reference(platform, rng, dtype, bias_dtype):
    N, K = 24, 40
    _, CB, SCB = int8_weight(rng, N, K)
    x = activations(rng, (3, 4, K), 6.0, dtype=dtype)
    bias = jnp.asarray(rng.standard_normal(N), bias_dtype)
    r = jnp.asarray(rng.standard_normal((3, 4, N)), dtype)

    def loss(x, CB, SCB, bias):
        return jnp.sum(
            ops.linear(x, CB, SCB, bias, 6.0).astype(jnp.float32) * r.astype(jnp.float32)
        )

    gx, gb = jax.grad(loss, argnums=(0, 3))(x, CB, SCB, bias)
    assert (gx.dtype, gx.shape, gb.dtype, gb.shape) == (dtype, x.shape, bias_dtype, bias.shape)
    ref_gx = grad_input_ref(f64(r), CB, SCB)
    np.testing.assert_allclose(
        f64(gx), ref_gx, rtol=0, atol=(4 * rel_eps(dtype) + 1e-5) * np.abs(ref_gx).max()
    )
    ref_gb = f64(r).sum((0, 1))
    np.testing.assert_allclose(f64(gb), ref_gb, rtol=4 * rel_eps(bias_dtype) + 1e-5, atol=1e-5)
    # The int8 weight and its scales are constants: their cotangents are zero.
    g_scb = jax.grad(loss, argnums=2)(x, CB, SCB, bias)
    assert g_scb.shape == SCB.shape and not np.any(np.asarray(g_scb))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_linear_fp_forward_and_grads(platform, rng, dtype):
    N, K = 16, 48
    w = jnp.asarray(rng.standard_normal((N, K)) * 0.1, jnp.float32)
    bias = jnp.asarray(rng.standard_normal(N), jnp.float32)
    x = activations(rng, (2, 5, K), 6.0, dtype=dtype)
    r = jnp.asarray(rng.standard_normal((2, 5, N)), jnp.float32)
    out = ops.linear_fp(x, w, bias, 6.0)
    CB, SCB = ops.quantize_weight(w)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ops.linear(x, CB, SCB, bias, 6.0)))

    def loss(x, w, b):
        return jnp.sum(ops.linear_fp(x, w, b, 6.0).astype(jnp.float32) * r)

    gx, gw, gb = jax.grad(loss, argnums=(0, 1, 2))(x, w, bias)
    assert (gx.dtype, gw.dtype, gb.dtype) == (dtype, jnp.float32, jnp.float32)
    r64, x64, w64 = f64(r.astype(dtype)), f64(x), f64(w)
    ref_gx = r64 @ w64
    np.testing.assert_allclose(
        f64(gx), ref_gx, rtol=0, atol=(4 * rel_eps(dtype) + 1e-5) * np.abs(ref_gx).max()
    )
    ref_gw = r64.reshape(-1, N).T @ x64.reshape(-1, K)
    np.testing.assert_allclose(f64(gw), ref_gw, rtol=0, atol=1e-5 * np.abs(ref_gw).max())
    np.testing.assert_allclose(f64(gb), r64.sum((0, 1)), rtol=1e-5, atol=1e-5)


# --- transformations --------------------------------------------------------------------------


def test_jit_equals_eager(platform, rng):
    _, CB, SCB = int8_weight(rng, 20, 36)
    x = activations(rng, (3, 7, 36), 6.0, dtype=jnp.float16)
    bias = jnp.asarray(rng.standard_normal(20), jnp.float32)
    eager = ops.linear(x, CB, SCB, bias, 6.0)
    jitted = jax.jit(ops.linear, static_argnames="threshold")(x, CB, SCB, bias, threshold=6.0)
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_vmap_is_per_element(platform, rng, threshold):
    """vmap keeps per-element semantics: each mapped element finds its own outlier columns."""
    _, CB, SCB = int8_weight(rng, 10, 32)
    x = activations(rng, (3, 4, 32), 0.0)
    x = x.at[0, 1, 5].set(20.0)  # an outlier column in element 0 only
    f = jax.jit(jax.vmap(lambda x: ops.linear(x, CB, SCB, None, threshold)))
    loop = np.stack([np.asarray(ops.linear(x[i], CB, SCB, None, threshold)) for i in range(3)])
    np.testing.assert_array_equal(np.asarray(f(x)), loop)
    folded = np.asarray(ops.linear(x, CB, SCB, None, threshold))
    if threshold == 0:
        np.testing.assert_array_equal(folded, loop)  # rows are independent without outliers
    else:  # one call over all elements shares element 0's outlier column
        assert not np.array_equal(folded[1], loop[1])


def test_vmap_over_stacked_weights_and_quantize(platform, rng):
    x = activations(rng, (5, 24), 6.0)
    ws = [int8_weight(rng, 8, 24) for _ in range(3)]
    CBs, SCBs = jnp.stack([w[1] for w in ws]), jnp.stack([w[2] for w in ws])
    out = jax.vmap(lambda cb, scb: ops.linear(x, cb, scb, None, 6.0))(CBs, SCBs)
    for i in range(3):
        np.testing.assert_array_equal(
            np.asarray(out[i]), np.asarray(ops.linear(x, CBs[i], SCBs[i], None, 6.0))
        )
    xs = activations(rng, (3, 5, 24), 6.0)
    q, s, m = jax.vmap(lambda x: ops.quantize_rows(x, 6.0))(xs)
    assert m.shape == (3, 24)
    for i in range(3):
        qi, si, mi = ops.quantize_rows(xs[i], 6.0)
        np.testing.assert_array_equal(np.asarray(q[i]), np.asarray(qi))
        np.testing.assert_array_equal(np.asarray(m[i]), np.asarray(mi))
    w = jnp.stack([f64(w[0]).astype(np.float32) for w in ws])
    CBv, SCBv = jax.vmap(ops.quantize_weight)(w)
    np.testing.assert_array_equal(np.asarray(CBv[1]), np.asarray(ops.quantize_weight(w[1])[0]))


def test_vmap_of_grad_and_checkpoint(platform, rng):
    _, CB, SCB = int8_weight(rng, 12, 20)
    x = activations(rng, (4, 3, 20), 6.0)

    def loss(x):
        return jnp.sum(jnp.tanh(ops.linear(x, CB, SCB, None, 6.0)))

    per_elem = jax.jit(jax.vmap(jax.grad(loss)))(x)
    for i in range(4):
        np.testing.assert_allclose(
            np.asarray(per_elem[i]), np.asarray(jax.grad(loss)(x[i])), rtol=1e-6, atol=1e-7
        )
    remat = jax.grad(
        lambda x: loss(
            jax.checkpoint(lambda x: ops.linear(x, CB, SCB, None, 6.0))(x) @ CB.astype(jnp.float32)
        )
    )
    plain = jax.grad(lambda x: loss(ops.linear(x, CB, SCB, None, 6.0) @ CB.astype(jnp.float32)))
    np.testing.assert_array_equal(np.asarray(jax.jit(remat)(x)), np.asarray(jax.jit(plain)(x)))


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)])
def test_empty_batch(platform, rng, shape):
    _, CB, SCB = int8_weight(rng, 8, 16)
    bias = jnp.ones(8, jnp.float32)
    x = jnp.zeros(shape, jnp.float16)
    out = ops.linear(x, CB, SCB, bias, 6.0)
    assert out.shape == (*shape[:-1], 8) and out.dtype == jnp.float16
    gx, gb = jax.jit(
        jax.grad(
            lambda x, b: jnp.sum(ops.linear(x, CB, SCB, b, 6.0).astype(jnp.float32)), argnums=(0, 1)
        )
    )(x, bias)
    assert gx.shape == shape and not np.any(np.asarray(gb))
    q, s, m = ops.quantize_rows(x, 6.0)
    assert q.shape == shape and s.shape == shape[:-1] and not np.any(np.asarray(m))


# --- layouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["col32", "col_turing", "col_ampere"])
@pytest.mark.parametrize("shape", [(40, 70), (8, 32), (3, 5)])
def test_transform_matches_layout_reference(platform, rng, order, shape):
    a = rng.integers(-128, 128, size=shape).astype(np.int8)
    tiled = ops.transform_layout(jnp.asarray(a), order)
    assert tiled.shape == L.padded_shape(order, *shape)
    np.testing.assert_array_equal(np.asarray(tiled), to_layout_ref(a, order))
    np.testing.assert_array_equal(np.asarray(ops.transform_layout(tiled, "row", order, shape)), a)
    other = "col32" if order != "col32" else "col_ampere"
    np.testing.assert_array_equal(
        np.asarray(ops.transform_layout(tiled, other, order, shape)), to_layout_ref(a, other)
    )


@pytest.mark.parametrize("order", ["col_turing", "col_ampere"])
def test_undo_layout_with_jax_transform(platform, rng, order):
    tile = L.TILE_SHAPES[order]
    idx = L.get_inverse_transform_indices(
        lambda t: ops.transform_layout(t, order), tile, like="jax"
    )
    a = rng.integers(-128, 128, size=(2 * tile[0], 64)).astype(np.int8)
    restored = L.undo_layout(ops.transform_layout(jnp.asarray(a), order), idx)
    np.testing.assert_array_equal(np.asarray(restored), a)


# --- validation -------------------------------------------------------------------------------


def _w(N=8, K=16):
    return jnp.zeros((N, K), jnp.int8), jnp.ones(N, jnp.float32)


@pytest.mark.parametrize(
    "make_call,exc,match",
    [
        (lambda: ops.linear(jnp.zeros((2, 16), jnp.int32), *_w()), TypeError, "x must be float32"),
        (
            lambda: ops.linear(jnp.zeros((2, 16)), _w()[0].astype(jnp.int32), _w()[1]),
            TypeError,
            "CB must be int8",
        ),
        (
            lambda: ops.linear(jnp.zeros((2, 16)), _w()[0], _w()[1].astype(jnp.float16)),
            TypeError,
            "SCB must be float32",
        ),
        (
            lambda: ops.linear(jnp.zeros((2, 15)), *_w()),
            ValueError,
            "x has 15 features but CB expects 16",
        ),
        (
            lambda: ops.linear(jnp.zeros((2, 16)), _w()[0], jnp.ones(7)),
            ValueError,
            r"SCB must have shape \(8,\)",
        ),
        (
            lambda: ops.linear(jnp.zeros((2, 16)), *_w(), bias=jnp.ones(3)),
            ValueError,
            r"bias must have shape \(8,\)",
        ),
        (
            lambda: ops.linear(jnp.zeros((2, 16)), *_w(), threshold=-1.0),
            ValueError,
            "threshold must be",
        ),
        (
            lambda: ops.linear(jnp.zeros((2, 16)), *_w(), threshold=float("nan")),
            ValueError,
            "threshold must be",
        ),
        (lambda: ops.linear(jnp.zeros(()), *_w()), ValueError, "at least one dimension"),
        (
            lambda: ops.linear_fp(jnp.zeros((2, 16)), jnp.zeros((8, 16), jnp.int8)),
            TypeError,
            "w must be float32",
        ),
        (
            lambda: ops.int8_gemm(jnp.zeros((2, 16), jnp.int8), jnp.zeros((8, 15), jnp.int8)),
            ValueError,
            "B must be 2-D",
        ),
        (
            lambda: ops.dequant_epilogue(
                jnp.zeros((2, 8), jnp.int32), jnp.ones(2), jnp.ones(8), dtype=jnp.int8
            ),
            TypeError,
            "dtype must be",
        ),
        (
            lambda: ops.transform_layout(jnp.zeros((4, 4), jnp.int8), "col64"),
            ValueError,
            "to_order must be one of",
        ),
        (
            lambda: ops.transform_layout(jnp.zeros((4, 32), jnp.int8), "row", "col32"),
            ValueError,
            "needs shape",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(make_call, exc, match):
    with pytest.raises(exc, match=match):
        make_call()


def test_traced_threshold_is_a_clear_error():
    f = jax.jit(lambda x, t: ops.linear(x, *_w(), threshold=t))
    with pytest.raises(TypeError, match="static Python number"):
        f(jnp.zeros((2, 16)), 6.0)


def test_import_lt8_jax_does_not_import_torch():
    code = "import sys, lt8.jax, lt8.jax.nnx; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"


def test_eager_calls_reuse_one_compiled_kernel(platform, rng):
    """Called eagerly (no enclosing jit), the ops run a cached jax.jit: fresh
    inputs of the same shapes reuse one executable (no re-tracing per call, which cost ~1.7 ms
    a call), a new static threshold adds one, and the results equal a jitted call's bit for bit."""
    _, CB, SCB = int8_weight(rng, 24, 40)
    bias = jnp.asarray(rng.standard_normal(24).astype(np.float32))
    ops._linear_jit.clear_cache()
    ops._weight_linear_jit.clear_cache()
    jitted = jax.jit(lambda x: ops.linear(x, CB, SCB, bias, 6.0))
    for _ in range(3):
        x = activations(rng, (5, 40), 6.0)
        np.testing.assert_array_equal(ops.linear(x, CB, SCB, bias, 6.0), jitted(x))
        ops.weight_linear(x, CB, SCB, bias)
    assert ops._linear_jit._cache_size() == 1
    assert ops._weight_linear_jit._cache_size() == 1
    ops.linear(x, CB, SCB, bias, 3.0)
    assert ops._linear_jit._cache_size() == 2
    # The other ops' kernels too (quantize_weight's quantizer, the int8 GEMM).
    ops._gemm_kernel.clear_cache()
    ops._quantize_rows(0.0).clear_cache()
    for _ in range(3):
        A = jnp.asarray(rng.integers(-127, 128, (5, 40)), jnp.int8)
        np.testing.assert_array_equal(
            ops.int8_gemm(A, CB), np.asarray(A, np.int32) @ np.asarray(CB, np.int32).T
        )
        ops.quantize_weight(jnp.asarray(rng.standard_normal((24, 40)), jnp.float32))
    assert ops._gemm_kernel._cache_size() == 1
    assert ops._quantize_rows(0.0)._cache_size() == 1
    ops._linear_fp_jit.clear_cache()
    W = jnp.asarray(rng.standard_normal((24, 40)), jnp.float32)
    for _ in range(3):
        x = activations(rng, (5, 40), 6.0)
        np.testing.assert_array_equal(
            ops.linear_fp(x, W, bias, 6.0), jax.jit(lambda x: ops.linear_fp(x, W, bias, 6.0))(x)
        )
    assert ops._linear_fp_jit._cache_size() == 1

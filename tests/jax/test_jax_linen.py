"""Flax layers: linen ``Dense8bit`` and NNX ``Linear8bit`` (init, apply, conversion from float
layers and torch state dicts, serialization, training mode), against float64 references."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization
from jax_helpers import DTYPE_IDS, DTYPES, activations, f64, platform, rel_eps  # noqa: F401
from reference import linear_ref, quantize_rows_ref

from lt8.jax import Dense8bit
from lt8.jax.nnx import Int8Weight, Linear8bit


def int8_bound(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Worst-case |LLM.int8() - x @ W.T| from rounding x and W to int8 (half a step each)."""
    sx, sw = np.abs(x).max(-1, keepdims=True), np.abs(W).max(1)
    K = x.shape[-1]
    return (
        sw * np.abs(x).sum(-1, keepdims=True) + sx * np.abs(W).sum(1)
    ) / 254 + K * sx * sw / 254**2


# --- linen ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [True, False])
def test_init_and_apply_match_reference(platform, rng, use_bias):
    x = activations(rng, (2, 3, 24), 6.0)
    layer = Dense8bit(10, use_bias=use_bias, bias_init=nn.initializers.normal(1.0))
    variables = layer.init(jax.random.key(int(rng.integers(2**31))), x)
    assert set(variables) == ({"params", "int8"} if use_bias else {"int8"})
    CB, SCB = variables["int8"]["CB"], variables["int8"]["SCB"]
    assert (CB.dtype, CB.shape, SCB.dtype, SCB.shape) == (jnp.int8, (10, 24), jnp.float32, (10,))
    assert np.abs(np.asarray(CB)).max(1).min() == 127  # each row reaches its absmax
    bias = variables["params"]["bias"] if use_bias else None
    out = jax.jit(layer.apply)(variables, x)
    ref = linear_ref(f64(x), CB, SCB, None if bias is None else f64(bias), 6.0)
    np.testing.assert_allclose(f64(out), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_init_quantizes_the_kernel_init(rng):
    x = jnp.ones((1, 16))
    key = jax.random.key(int(rng.integers(2**31)))
    q = Dense8bit(8).init(key, x)
    fp = nn.Dense(8).init(key, x)["params"]
    CB_ref, SCB_ref, _ = quantize_rows_ref(f64(fp["kernel"]).T, 0.0)
    np.testing.assert_array_equal(np.asarray(q["int8"]["SCB"]), SCB_ref.astype(np.float32))
    assert np.abs(np.asarray(q["int8"]["CB"], np.int32) - CB_ref).max() <= 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_from_dense_is_close_to_dense(platform, rng, dtype):
    dense = nn.Dense(32)
    x = activations(rng, (4, 7, 64), 6.0)
    params = dense.init(jax.random.key(int(rng.integers(2**31))), x)["params"]
    variables = Dense8bit.variables_from_dense(params)
    out = Dense8bit(32, dtype=dtype).apply(variables, x)
    assert out.dtype == dtype
    exact = f64(x) @ f64(params["kernel"]) + f64(params["bias"])
    bound = int8_bound(f64(x).reshape(-1, 64), f64(params["kernel"]).T).reshape(exact.shape)
    tol = (
        bound
        + 4 * rel_eps(dtype) * (np.abs(exact).max() + 1)
        + 2 * rel_eps(dtype) * np.abs(f64(x)).max() * 8
    )
    assert np.all(np.abs(f64(out) - exact) <= tol)
    # dtype=None computes in the input's dtype.
    assert Dense8bit(32).apply(variables, x.astype(dtype)).dtype == dtype


def test_serialization_roundtrip_gives_identical_outputs(platform, rng):
    x = activations(rng, (5, 48), 6.0)
    params = nn.Dense(20).init(jax.random.key(int(rng.integers(2**31))), x)["params"]
    variables = Dense8bit.variables_from_dense(params)
    layer = Dense8bit(20)
    blob = serialization.to_bytes(variables)
    template = layer.init(jax.random.key(0), x)
    restored = serialization.from_bytes(template, blob)
    assert restored["int8"]["CB"].dtype == np.int8
    np.testing.assert_array_equal(
        np.asarray(restored["int8"]["CB"]), np.asarray(variables["int8"]["CB"])
    )
    np.testing.assert_array_equal(
        np.asarray(layer.apply(restored, x)), np.asarray(layer.apply(variables, x))
    )


def test_apply_without_int8_collection_is_a_clear_error():
    x = jnp.ones((2, 8))
    variables = Dense8bit(4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="'int8' collection"):
        Dense8bit(4).apply({"params": variables["params"]}, x)


def test_inference_grads_reach_bias_and_input_only(platform, rng):
    x = activations(rng, (6, 16), 6.0)
    layer = Dense8bit(8)
    variables = layer.init(jax.random.key(0), x)
    r = jnp.asarray(rng.standard_normal((6, 8)), jnp.float32)

    def loss(params, x):
        return jnp.sum(layer.apply({"params": params, "int8": variables["int8"]}, x) * r)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(variables["params"], x)
    assert set(g_params) == {"bias"}
    np.testing.assert_allclose(f64(g_params["bias"]), f64(r).sum(0), rtol=1e-6, atol=1e-6)
    W = f64(variables["int8"]["CB"]) * f64(variables["int8"]["SCB"])[:, None] / 127
    np.testing.assert_allclose(f64(g_x), f64(r) @ W, rtol=1e-5, atol=1e-6)


def test_training_mode_grads_and_optax_step(platform, rng):
    K, N = 16, 4
    x = activations(rng, (64, K), 6.0, n_outlier_cols=0)
    W_true = rng.standard_normal((N, K)).astype(np.float32)
    y = x @ jnp.asarray(W_true.T)
    layer = Dense8bit(N, has_fp16_weights=True)
    params = layer.init(jax.random.key(int(rng.integers(2**31))), x)["params"]
    assert params["kernel"].dtype == jnp.float32 and params["kernel"].shape == (K, N)

    def loss(p):
        return jnp.mean((layer.apply({"params": p}, x) - y) ** 2)

    grads = jax.grad(loss)(params)
    out = f64(layer.apply({"params": params}, x))
    g_out = 2 * (out - f64(y)) / out.size  # d mean((out - y)^2) / d out
    np.testing.assert_allclose(f64(grads["kernel"]), f64(x).T @ g_out, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(f64(grads["bias"]), g_out.sum(0), rtol=1e-4, atol=1e-6)
    opt = optax.adam(0.05)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        lv, g = jax.value_and_grad(loss)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, lv

    first = float(loss(params))
    for _ in range(30):
        params, state, _ = step(params, state)
    assert float(loss(params)) < 0.2 * first


# --- NNX --------------------------------------------------------------------------------------


def test_nnx_from_linear_is_close_to_linear(platform, rng):
    fp = nnx.Linear(48, 24, rngs=nnx.Rngs(int(rng.integers(2**31))))
    layer = Linear8bit.from_linear(fp, threshold=6.0)
    x = activations(rng, (3, 5, 48), 6.0)
    exact = f64(x) @ f64(fp.kernel[...]) + f64(fp.bias[...])
    bound = int8_bound(f64(x).reshape(-1, 48), f64(fp.kernel[...]).T).reshape(exact.shape)
    assert np.all(np.abs(f64(layer(x)) - exact) <= bound + 1e-5)
    assert layer.CB[...].dtype == jnp.int8 and layer.CB[...].shape == (24, 48)


def test_nnx_and_linen_agree_and_int8_state_is_not_a_param(platform, rng):
    layer = Linear8bit(
        32, 16, rngs=nnx.Rngs(int(rng.integers(2**31))), bias_init=nnx.initializers.ones_init()
    )
    params = nnx.state(layer, nnx.Param)
    int8 = nnx.state(layer, Int8Weight)
    assert set(nnx.to_pure_dict(params)) == {"bias"} and set(nnx.to_pure_dict(int8)) == {
        "CB",
        "SCB",
    }
    x = activations(rng, (4, 32), 6.0)
    variables = {
        "params": {"bias": layer.bias[...]},
        "int8": {"CB": layer.CB[...], "SCB": layer.SCB[...]},
    }
    np.testing.assert_array_equal(
        np.asarray(layer(x)), np.asarray(Dense8bit(16).apply(variables, x))
    )
    # nnx.grad differentiates Params only; the int8 weight rides along untouched.
    grads = nnx.grad(lambda m: jnp.sum(m(x)))(layer)
    np.testing.assert_allclose(f64(grads.bias[...]), np.full(16, 4.0))


def test_nnx_training_mode_optimizer_step(platform, rng):
    K, N = 12, 3
    x = activations(rng, (64, K), 6.0, n_outlier_cols=0)
    y = x @ jnp.asarray(rng.standard_normal((K, N)), jnp.float32)
    model = Linear8bit(K, N, has_fp16_weights=True, rngs=nnx.Rngs(int(rng.integers(2**31))))
    assert not nnx.to_pure_dict(nnx.state(model, Int8Weight))
    optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)

    def loss(m):
        return jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def step(m, opt):
        lv, g = nnx.value_and_grad(loss)(m)
        opt.update(m, g)
        return lv

    first = float(loss(model))
    for _ in range(30):
        step(model, optimizer)
    assert float(loss(model)) < 0.2 * first


# --- checkpoints (torch interop) --------------------------------------------------------------


def test_variables_from_torch_linear_and_back(rng):
    torch = pytest.importorskip("torch")
    import lt8.nn

    fp = torch.nn.Linear(40, 12)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    variables = Dense8bit.variables_from_torch(fp.state_dict())
    out = np.asarray(Dense8bit(12).apply(variables, jnp.asarray(x)), np.float64)
    exact = (
        x.astype(np.float64) @ fp.weight.detach().double().numpy().T
        + fp.bias.detach().double().numpy()
    )
    assert np.all(
        np.abs(out - exact)
        <= int8_bound(x.astype(np.float64), fp.weight.detach().double().numpy()) + 1e-5
    )

    # lt8's torch layer loads the JAX checkpoint and computes the same bits on the same kernels.
    q = lt8.nn.Linear8bitLt(40, 12, has_fp16_weights=False, threshold=6.0).to("cpu")
    sd = {k: torch.from_numpy(np.array(v)) for k, v in Dense8bit.to_state_dict(variables).items()}
    assert (
        set(sd) == {"weight", "SCB", "bias", "weight_format"} and sd["weight"].dtype == torch.int8
    )
    q.load_state_dict(sd)
    np.testing.assert_array_equal(
        q(torch.from_numpy(x)).detach().numpy(), np.asarray(out, np.float32)
    )

    # And a torch Linear8bitLt state dict comes back to JAX unchanged.
    back = Dense8bit.variables_from_torch(q.state_dict())
    np.testing.assert_array_equal(
        np.asarray(back["int8"]["CB"]), np.asarray(variables["int8"]["CB"])
    )
    np.testing.assert_array_equal(
        np.asarray(back["int8"]["SCB"]), np.asarray(variables["int8"]["SCB"])
    )


def test_variables_from_tiled_numpy_checkpoint(rng):
    from layout_reference import to_layout_ref as to_layout_reference

    CB = rng.integers(-127, 128, size=(10, 40)).astype(np.int8)
    SCB = rng.uniform(0.1, 1, size=10).astype(np.float32)
    sd = {
        "weight": to_layout_reference(CB, "col_turing"),
        "SCB": SCB,
        "weight_format": np.array(2, np.uint8),
    }
    with pytest.raises(ValueError, match="in_features"):
        Dense8bit.variables_from_torch(sd)
    variables = Dense8bit.variables_from_torch(sd, in_features=40)
    np.testing.assert_array_equal(np.asarray(variables["int8"]["CB"]), CB)
    assert variables["params"] == {}


@pytest.mark.parametrize("module", ["lt8.jax.linen", "lt8.jax.nnx"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0

"""Flax partitioning metadata on the int8 layers, and a sharded Flax transformer block.

``Dense8bit`` (linen) and ``Linear8bit`` (NNX) take ``with_partitioning`` initializers as
``nn.Dense`` / ``nnx.Linear`` do: the int8 weight ``CB`` gets the kernel's names as
(out, in), ``SCB`` the out name, so ``get_partition_spec`` and ``jax.jit(out_shardings=...)``
place them; XLA's partitioner then runs the int8 ops on each device's shard. Mesh tests run on
8 host devices in a subprocess (``mesh_worker``); metadata tests run in the parent too.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax_helpers import activations, f64
from mesh_worker import compiled_hlo, host_devices, run_workers, s8_all_gathers, worker

from lt8.jax import Dense8bit, ops
from lt8.jax.nnx import Linear8bit

RULES = (("batch", "data"), ("embed", None), ("heads", "model"), ("mlp", "model"))


def test_flax_sharding_on_8_host_devices():
    run_workers(__file__)


def logical(names):
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)


# --- metadata (any device count) ----------------------------------------------------------------


@pytest.mark.parametrize("box", ["partitioned", "logical"])
def test_dense8bit_keeps_partitioning_names(rng, box):
    init = nn.initializers.lecun_normal()
    kernel_init = (
        nn.with_partitioning(init, ("embed", "mlp"))
        if box == "partitioned"
        else logical(("embed", "mlp"))
    )
    bias_init = nn.with_partitioning(nn.initializers.zeros_init(), ("mlp",))
    layer = Dense8bit(16, threshold=0.0, kernel_init=kernel_init, bias_init=bias_init)
    x = jnp.asarray(rng.standard_normal((3, 8)), jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    specs = nn.get_partition_spec(variables)
    assert specs == {
        "int8": {"CB": P("mlp", "embed"), "SCB": P("mlp")},
        "params": {"bias": P("mlp")},
    }
    # The boxed layer computes what the plain one does from the same key.
    plain = Dense8bit(16, threshold=0.0).init(jax.random.key(0), x)
    unboxed = nn.meta.unbox(variables)
    np.testing.assert_array_equal(
        np.asarray(unboxed["int8"]["CB"]), np.asarray(plain["int8"]["CB"])
    )
    np.testing.assert_array_equal(
        np.asarray(layer.apply(variables, x)), np.asarray(layer.apply(unboxed, x))
    )


def test_variables_from_dense_keeps_boxes(rng):
    x = jnp.asarray(rng.standard_normal((3, 8)), jnp.float32)
    dense = nn.Dense(
        16,
        kernel_init=logical(("embed", "mlp")),
        bias_init=nn.with_logical_partitioning(nn.initializers.normal(), ("mlp",)),
    )
    params = dense.init(jax.random.key(1), x)
    variables = Dense8bit.variables_from_dense(params)
    assert nn.get_partition_spec(variables) == {
        "int8": {"CB": P("mlp", "embed"), "SCB": P("mlp")},
        "params": {"bias": P("mlp")},
    }
    ref = Dense8bit.variables_from_dense(nn.meta.unbox(params))
    out = Dense8bit(16, threshold=0.0).apply(variables, x)
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(Dense8bit(16, threshold=0.0).apply(ref, x))
    )
    kernel = nn.meta.unbox(params)["params"]["kernel"]
    np.testing.assert_allclose(
        out,
        dense.apply(nn.meta.unbox(params), x),
        rtol=0,
        atol=0.02 * float(jnp.abs(kernel).sum(0).max()),
    )


# --- on a mesh ----------------------------------------------------------------------------------


@pytest.fixture
def mesh():
    return Mesh(host_devices().reshape(2, 4), ("data", "model"))


class Block(nn.Module):
    """A pre-norm transformer block: attention (q/k/v column-parallel over heads, output
    row-parallel) and a ReLU MLP (up column-, down row-parallel), every projection a Dense8bit
    with logical partitioning names."""

    embed: int = 64
    heads: int = 4
    mlp: int = 128
    threshold: float = 6.0

    def dense(self, features, names, name):
        return Dense8bit(
            features,
            threshold=self.threshold,
            kernel_init=logical(names),
            bias_init=nn.with_logical_partitioning(nn.initializers.normal(0.1), names[1:]),
            name=name,
        )

    @nn.compact
    def __call__(self, x):
        B, S, D = x.shape
        dh = D // self.heads
        h = nn.LayerNorm(use_bias=False, use_scale=False)(x)
        q, k, v = (
            self.dense(D, ("embed", "heads"), n)(h).reshape(B, S, self.heads, dh)
            for n in ("q", "k", "v")
        )
        att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh), axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(B, S, D)
        x = x + self.dense(D, ("heads", "embed"), "o")(o)
        h = nn.LayerNorm(use_bias=False, use_scale=False)(x)
        h = jax.nn.relu(self.dense(self.mlp, ("embed", "mlp"), "up")(h))
        return x + self.dense(D, ("mlp", "embed"), "down")(h)


@worker
@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["t0", "t6"])
def test_worker_linen_transformer_block_over_data_and_model(mesh, rng, threshold):
    x = activations(rng, (4, 8, 64), threshold, n_outlier_cols=0)
    x = x.at[:, :, 5].multiply(20.0)  # a large-gain channel: outliers after the LayerNorm
    block = Block(threshold=threshold)
    abstract = jax.eval_shape(block.init, jax.random.key(0), x)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        variables = jax.jit(block.init, out_shardings=shardings)(jax.random.key(0), x)
        int8 = nn.meta.unbox(variables)["int8"]
        assert int8["up"]["CB"].sharding.spec == P("model", None)
        assert int8["down"]["CB"].sharding.spec == P(None, "model")
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        fwd = jax.jit(block.apply)
        out = fwd(variables, xs)
        hlo = compiled_hlo(block.apply, variables, xs)
        grad = jax.jit(jax.grad(lambda x: jnp.sum(block.apply(variables, x) ** 2)))
        g = grad(xs)
        assert s8_all_gathers(compiled_hlo(grad, xs)) == []
    assert s8_all_gathers(hlo) == []
    assert out.sharding.spec[0] == "data"
    plain = jax.device_get(nn.meta.unbox(variables))
    ref = block.apply(plain, x)
    g_ref = jax.grad(lambda x: jnp.sum(block.apply(plain, x) ** 2))(x)
    # XLA may compile the float parts (LayerNorm, softmax) differently per shard shape, and the
    # row-parallel layers sum float outlier terms across devices: float32 rounding.
    for a, b in ((out, ref), (g, g_ref)):
        np.testing.assert_allclose(f64(a), f64(b), rtol=0, atol=2e-5 * np.abs(f64(b)).max())
    # ... and the block is really LLM.int8(): the int8 projections are used.
    assert any(
        k in str(jax.make_jaxpr(block.apply)(plain, x))
        for k in ("lt8_int8_linear", "custom_partitioning")
    )


@worker
def test_worker_nnx_with_partitioning_and_from_linear(mesh, rng):
    x = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    with jax.set_mesh(mesh):
        fp = nnx.Linear(
            64,
            32,
            rngs=nnx.Rngs(0),
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",)),
        )
        q = Linear8bit.from_linear(fp, threshold=0.0)
        made = Linear8bit(
            64,
            32,
            threshold=0.0,
            rngs=nnx.Rngs(0),
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("model", None)),
        )
        specs = nnx.get_partition_spec(nnx.state(q))
        out = nnx.jit(lambda m, x: m(x))(q, x)
        made_out = nnx.jit(lambda m, x: m(x))(made, x)
        hlo = compiled_hlo(lambda s, x: nnx.merge(nnx.graphdef(q), s)(x), nnx.state(q), x)
    assert specs["CB"].get_value() == P("model", None)
    assert specs["SCB"].get_value() == P("model")
    assert specs["bias"].get_value() == P("model")
    assert q.CB.get_value().sharding.spec == P("model", None)
    assert nnx.get_partition_spec(nnx.state(made))["CB"].get_value() == P(None, "model")
    assert made.CB.get_value().sharding.spec == P(None, "model")
    assert s8_all_gathers(hlo) == []
    CB, SCB = ops.quantize_weight(fp.kernel.get_value().T)
    ref = ops.linear(x, CB, SCB, fp.bias.get_value(), 0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    ref_made = ops.linear(x, made.CB.get_value(), made.SCB.get_value(), made.bias.get_value(), 0.0)
    np.testing.assert_array_equal(np.asarray(made_out), np.asarray(jax.device_get(ref_made)))

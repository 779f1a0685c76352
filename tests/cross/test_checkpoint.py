"""lt8's on-disk checkpoint format (lt8.core.checkpoint), written and read by both frontends:
torch ``save_quantized``/``load_quantized`` and JAX ``save_variables``/``load_variables``.

Round trips are exact (same int8 bytes, same kernels: bit-identical outputs on the CPU), the
metadata (format version, thresholds) survives, and every bad file raises a ValueError naming
the problem while the model it was loaded into stays exactly as it was."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
fnn = pytest.importorskip("flax.linen")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import jax.numpy as jnp  # noqa: E402
from torch import nn  # noqa: E402

import lt8.jax  # noqa: E402
import lt8.torch  # noqa: E402
from lt8.core import checkpoint as ckpt  # noqa: E402
from lt8.jax import Dense8bit  # noqa: E402

SIZES = (32, 48, 40, 16)
THRESHOLD = 6.0
N = len(SIZES) - 1


class TorchMLP(nn.Module):
    def __init__(self, sizes=SIZES):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class FlaxMLP(fnn.Module):
    """TorchMLP in Flax: layers named as torch's ("layers.0", ...), so the checkpoints match."""

    sizes: tuple = SIZES
    threshold: float = THRESHOLD

    @fnn.compact
    def __call__(self, x):
        for i, features in enumerate(self.sizes[1:]):
            x = Dense8bit(features, threshold=self.threshold, name=f"layers.{i}")(x)
            if i < len(self.sizes) - 2:
                x = fnn.relu(x)
        return x


@jax.jit
def flax_apply(variables, x):
    """FlaxMLP's forward, compiled once for the whole module."""
    return FlaxMLP().apply(variables, x)


def flax_template():
    """FlaxMLP's variables as shapes and dtypes (no computation): a ``like`` for load_variables."""
    return jax.eval_shape(FlaxMLP().init, jax.random.key(0), jnp.zeros((1, SIZES[0])))


def quantized_torch_model(seed: int, threshold: float = THRESHOLD) -> nn.Module:
    torch.manual_seed(seed)
    return lt8.torch.replace_linear(TorchMLP().eval(), threshold=threshold, skip_modules=())


def inputs(rng, n: int = 8) -> np.ndarray:
    x = rng.standard_normal((n, SIZES[0])).astype(np.float32)
    x[:, [3, 17]] *= 25.0  # outlier columns: the decomposition is exercised
    return x


def torch_out(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def snapshot(model) -> dict:
    """Every tensor of the model, copied (SCB included: it is in a Linear8bitLt's state dict)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), f"{k} changed"


@pytest.fixture
def saved(tmp_path):
    """(model, path): a quantized torch MLP saved with save_quantized."""
    model = quantized_torch_model(0)
    path = tmp_path / "mlp.safetensors"
    lt8.torch.save_quantized(model, path)
    return model, path


# --- round trips -----------------------------------------------------------------------------------


def test_torch_round_trip_is_exact(saved, rng):
    model, path = saved
    fresh = quantized_torch_model(1)
    x = inputs(rng)
    assert not np.array_equal(torch_out(fresh, x), torch_out(model, x))
    result = lt8.torch.load_quantized(fresh, path)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(torch.from_numpy(torch_out(fresh, x)), torch.from_numpy(torch_out(model, x)))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    for i in range(N):
        assert torch.equal(fresh.layers[i].weight.SCB, model.layers[i].weight.SCB)
        assert fresh.layers[i].state.SCB is fresh.layers[i].weight.SCB  # the state follows the load


def test_file_holds_bitsandbytes_keys(saved):
    model, path = saved
    tensors, info = ckpt.load_file(path)
    assert set(tensors) == {
        f"layers.{i}.{k}" for i in range(N) for k in ("weight", "SCB", "bias", "weight_format")
    }
    assert ckpt.linear_prefixes(tensors) == [f"layers.{i}" for i in range(N)]
    for i in range(N):
        assert ckpt.validate_linear(tensors, f"layers.{i}", SIZES[i + 1], SIZES[i]) == "row"
        assert tensors[f"layers.{i}.weight"].dtype == np.int8
        assert tensors[f"layers.{i}.SCB"].dtype == np.float32
        assert (
            tensors[f"layers.{i}.weight_format"].shape == ()
            and int(tensors[f"layers.{i}.weight_format"]) == 0
        )
    assert info.format_version == ckpt.FORMAT_VERSION and info.is_lt8
    assert info.metadata["format"] == ckpt.FORMAT_NAME


def test_torch_to_jax_is_bit_identical(saved, rng):
    model, path = saved
    x = inputs(rng)
    like = flax_template()  # shapes and dtypes only: jax.eval_shape
    variables = lt8.jax.load_variables(path, like=like)
    assert jax.tree.structure(variables) == jax.tree.structure(like)
    for i in range(N):
        np.testing.assert_array_equal(
            np.asarray(variables["int8"][f"layers.{i}"]["CB"]), model.layers[i].weight.data.numpy()
        )
    y = np.asarray(flax_apply(variables, jnp.asarray(x)))
    np.testing.assert_array_equal(y, torch_out(model, x))

    # Without a template the tree nests by the keys' dots.
    nested = lt8.jax.load_variables(path)
    assert set(nested) == {"params", "int8"}
    np.testing.assert_array_equal(
        np.asarray(nested["int8"]["layers"]["1"]["CB"]),
        np.asarray(variables["int8"]["layers.1"]["CB"]),
    )
    assert set(nested["params"]["layers"]["2"]) == {"bias"}


def test_jax_to_torch_is_bit_identical(tmp_path, rng):
    flax_model = FlaxMLP()
    variables = jax.jit(flax_model.init)(jax.random.key(3), jnp.zeros((1, SIZES[0])))
    path = tmp_path / "flax.safetensors"
    lt8.jax.save_variables(path, variables, threshold=THRESHOLD)
    info = ckpt.read_info(path)
    assert info.format_version == 1 and info.thresholds == {"": THRESHOLD}

    model = quantized_torch_model(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same thresholds: no warning
        lt8.torch.load_quantized(model, path)
    x = inputs(rng)
    y = np.asarray(flax_apply(variables, jnp.asarray(x)))
    np.testing.assert_array_equal(torch_out(model, x), y)

    # And back to JAX unchanged.
    back = lt8.jax.load_variables(path, like=variables)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class FlaxMixed(fnn.Module):
    """int8 layers next to float leaves: a LayerNorm (kept as is) and a float nn.Dense head
    (its kernel (in, out) stored as weight (out, in))."""

    @fnn.compact
    def __call__(self, x):
        x = Dense8bit(24, name="body")(x)
        x = fnn.LayerNorm(name="norm")(x)
        x = Dense8bit(20, has_fp16_weights=True, name="adapter")(x)
        return fnn.Dense(6, name="head")(x)


def random_like(template, rng):
    """Random arrays of a template's shapes and dtypes (SCB positive): variables with a real
    model's structure (from jax.eval_shape), without running its initializers."""

    def leaf(path, t):
        if t.dtype == jnp.int8:
            return jnp.asarray(rng.integers(-127, 128, t.shape).astype(np.int8))
        a = rng.standard_normal(t.shape)
        if jax.tree_util.keystr(path).endswith("['SCB']"):
            a = np.abs(a) + 0.1
        return jnp.asarray(a.astype(t.dtype))

    return jax.tree_util.tree_map_with_path(leaf, template)


def test_variables_to_tensors_convention(rng):
    variables = random_like(
        jax.eval_shape(FlaxMixed().init, jax.random.key(0), jnp.zeros((1, 12))), rng
    )
    tensors = lt8.jax.variables_to_tensors(variables)
    assert set(tensors) == {
        "body.weight",
        "body.SCB",
        "body.bias",
        "body.weight_format",
        "norm.scale",
        "norm.bias",
        "adapter.weight",
        "adapter.bias",
        "head.weight",
        "head.bias",
    }
    np.testing.assert_array_equal(
        tensors["body.weight"], np.asarray(variables["int8"]["body"]["CB"])
    )
    np.testing.assert_array_equal(
        tensors["head.weight"], np.asarray(variables["params"]["head"]["kernel"]).T
    )
    np.testing.assert_array_equal(
        tensors["adapter.weight"], np.asarray(variables["params"]["adapter"]["kernel"]).T
    )
    assert tensors["head.weight"].shape == (6, 20) and tensors["adapter.weight"].shape == (20, 24)

    back = lt8.jax.tensors_to_variables(tensors, like=variables)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    nested = lt8.jax.tensors_to_variables(tensors)  # no template: 2-D float weights become kernels
    np.testing.assert_array_equal(
        np.asarray(nested["params"]["head"]["kernel"]),
        np.asarray(variables["params"]["head"]["kernel"]),
    )
    assert set(nested["int8"]) == {"body"}

    with pytest.raises(ValueError, match="batch_stats"):
        lt8.jax.variables_to_tensors({**variables, "batch_stats": {}})
    with pytest.raises(ValueError, match=r"x\.weight: an int8 weight needs its scales 'x\.SCB'"):
        lt8.jax.tensors_to_variables({"x.weight": np.zeros((2, 2), np.int8)})


def test_jax_float_head_loads_into_torch_linear(tmp_path, rng):
    """The one transpose: a Flax float kernel (in, out) is torch's nn.Linear weight (out, in)."""

    class Head(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(6, name="lm_head")(Dense8bit(10, name="fc")(x))

    variables = random_like(jax.eval_shape(Head().init, jax.random.key(0), jnp.zeros((1, 8))), rng)
    path = tmp_path / "head.safetensors"
    lt8.jax.save_variables(path, variables)

    class TorchHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lm_head = nn.Linear(8, 10), nn.Linear(10, 6)

    model = lt8.torch.replace_linear(TorchHead())  # lm_head stays a float nn.Linear
    assert type(model.lm_head) is nn.Linear
    lt8.torch.load_quantized(model, path)
    np.testing.assert_array_equal(
        model.lm_head.weight.detach().numpy(),
        np.asarray(variables["params"]["lm_head"]["kernel"]).T,
    )
    np.testing.assert_array_equal(
        model.fc.weight.numpy(), np.asarray(variables["int8"]["fc"]["CB"])
    )


def test_nnx_save_and_load(tmp_path):
    nnx = pytest.importorskip("flax.nnx")
    from lt8.jax.nnx import Linear8bit

    class NnxMLP(nnx.Module):
        def __init__(self, seed):
            gen = np.random.default_rng(seed)  # numpy initializers: nothing to compile

            def init(key, shape, dtype):
                return jnp.asarray(gen.standard_normal(shape), dtype)

            self.layers = nnx.List(
                [
                    Linear8bit(
                        a,
                        b,
                        threshold=THRESHOLD,
                        kernel_init=init,
                        bias_init=init,
                        rngs=nnx.Rngs(seed),
                    )
                    for a, b in zip(SIZES[:-1], SIZES[1:])
                ]
            )

    def same_state(a, b):
        la, lb = jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))
        return len(la) == len(lb) and all(
            np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb)
        )

    src = NnxMLP(0)
    path = tmp_path / "nnx.safetensors"
    lt8.jax.save_variables(path, src, threshold=THRESHOLD)
    assert set(ckpt.load_file(path)[0]) == {
        f"layers.{i}.{k}" for i in range(N) for k in ("weight", "SCB", "bias", "weight_format")
    }
    # torch reads it (the outputs then agree as in the linen tests: same bytes, same kernels) ...
    model = quantized_torch_model(2)
    lt8.torch.load_quantized(model, path)
    for i, layer in enumerate(src.layers):
        np.testing.assert_array_equal(
            model.layers[i].weight.numpy(), np.asarray(layer.CB.get_value())
        )
        np.testing.assert_array_equal(
            model.layers[i].weight.SCB.numpy(), np.asarray(layer.SCB.get_value())
        )
        np.testing.assert_array_equal(
            model.layers[i].bias.detach().numpy(), np.asarray(layer.bias.get_value())
        )
    # ... and an NNX module is updated in place, after the checks.
    dst = NnxMLP(1)
    bad = tmp_path / "bad.safetensors"
    tensors, _ = ckpt.load_file(path)
    ckpt.save_file({**tensors, "layers.2.bias": tensors["layers.2.bias"][:-1]}, bad)
    before = NnxMLP(1)
    assert not same_state(dst, src)
    with pytest.raises(ValueError, match=r"layers\.2\.bias"):
        lt8.jax.load_variables(bad, like=dst)
    assert same_state(dst, before)
    assert lt8.jax.load_variables(path, like=dst) is dst
    assert same_state(dst, src)


# --- metadata -----------------------------------------------------------------------------------------


def test_global_threshold_metadata(saved):
    _, path = saved
    info = ckpt.read_info(path)
    assert info.format_version == 1
    assert info.thresholds == {"": THRESHOLD}
    assert info.threshold_for("layers.1") == THRESHOLD == info.threshold_for("layers.1.")
    assert json.loads(info.metadata["threshold"]) == THRESHOLD
    assert info.metadata["format_version"] == "1"


def test_per_layer_thresholds_and_extra_metadata(tmp_path):
    model = quantized_torch_model(0)
    model.layers[1].state.threshold = 4.0
    path = tmp_path / "m.safetensors"
    lt8.torch.save_quantized(model, path, metadata={"note": "hello"})
    info = ckpt.read_info(path)
    assert info.thresholds == {"layers.0": 6.0, "layers.1": 4.0, "layers.2": 6.0}
    assert info.threshold_for("layers.1") == 4.0 and info.threshold_for("layers.9") is None
    assert info.metadata["note"] == "hello"

    # Parents and a default apply to the layers under them.
    info = ckpt.CheckpointInfo(1, {"": 1.0, "encoder": 2.0, "encoder.layer.3": 3.0})
    assert info.threshold_for("encoder.layer.3.q") == 3.0
    assert info.threshold_for("encoder.layer.4.q") == 2.0
    assert info.threshold_for("decoder.x") == 1.0

    # The model keeps its thresholds; differing ones are reported.
    other = quantized_torch_model(1)
    with pytest.warns(UserWarning, match=r"layers\.1: 6\.0 \(file: 4\.0\)"):
        lt8.torch.load_quantized(other, path)
    assert [m.state.threshold for m in other.layers] == [6.0, 6.0, 6.0]

    with pytest.raises(ValueError, match="reserved"):
        ckpt.save_file({}, tmp_path / "x.safetensors", metadata={"threshold": "1"})
    with pytest.raises(ValueError, match="threshold"):
        ckpt.save_file({}, tmp_path / "x.safetensors", threshold=-1.0)


def test_no_threshold(tmp_path):
    path = tmp_path / "t.safetensors"
    ckpt.save_file(
        ckpt.write_linear(np.ones((2, 3), np.int8), np.ones(2, np.float32), prefix="fc."), path
    )
    tensors, info = ckpt.load_file(path)
    assert info.format_version == 1 and info.thresholds == {} and info.threshold_for("fc") is None
    entry = ckpt.read_linear(tensors, "fc.")
    assert entry["weight_format"] == "row" and entry["bias"] is None


# --- bad files: clear errors, the model untouched ---------------------------------------------


def _edit(tensors: dict, how: str) -> dict:
    t = dict(tensors)
    if how == "missing bias":
        del t["layers.1.bias"]
    elif how == "missing SCB":
        del t["layers.1.SCB"]
    elif how == "missing weight":
        del t["layers.2.weight"]
    elif how == "weight shape":
        t["layers.0.weight"] = np.zeros((48, 31), np.int8)
    elif how == "SCB shape":
        t["layers.2.SCB"] = t["layers.2.SCB"][:-1].copy()
    elif how == "bias shape":
        t["layers.2.bias"] = np.zeros(17, np.float32)
    elif how == "weight int16":
        t["layers.1.weight"] = t["layers.1.weight"].astype(np.int16)
    elif how == "SCB float16":
        t["layers.1.SCB"] = t["layers.1.SCB"].astype(np.float16)
    elif how == "bias int32":
        t["layers.0.bias"] = np.zeros(48, np.int32)
    elif how == "weight_format 9":
        t["layers.2.weight_format"] = np.array(9, np.uint8)
    elif how == "weight_format int64":
        t["layers.2.weight_format"] = np.array(0, np.int64)
    elif how == "unexpected key":
        t["layers.0.extra"] = np.zeros(3, np.float32)
    elif how == "weight float next to SCB":
        t["layers.0.weight"] = t["layers.0.weight"].astype(np.float32)
    elif how == "SCB 2-D":
        t["layers.1.SCB"] = t["layers.1.SCB"][None]
    elif how == "weight_format float":
        t["layers.0.weight_format"] = np.array(0.0, np.float32)
    elif how == "float weight shape":
        del t["layers.2.SCB"], t["layers.2.weight_format"]
        t["layers.2.weight"] = np.zeros((16, 41), np.float32)
    else:
        raise AssertionError(how)
    return t


BAD = {  # edit -> what the error must name
    "missing bias": r"missing keys: 'layers\.1\.bias'",
    "missing SCB": r"layers\.1\.weight.*layers\.1\.SCB",
    "missing weight": r"layers\.2\.weight",
    "weight shape": r"layers\.0\.weight: expected shape \(out, in\) = \(48, 32\), got \(48, 31\)",
    "SCB shape": r"layers\.2\.SCB: expected float32 of shape \(16,\)",
    "bias shape": r"layers\.2\.bias: expected a float tensor of shape \(16,\)",
    "weight int16": r"layers\.1\.weight: expected int8",
    "SCB float16": r"layers\.1\.SCB: expected float32 .*float16",
    "bias int32": r"layers\.0\.bias: expected a float tensor",
    "weight_format 9": r"layers\.2\.weight_format: expected one of \[0, 1, 2, 3\].*got 9",
    "weight_format int64": r"layers\.2\.weight_format: expected a uint8 scalar",
    "unexpected key": r"unexpected keys: 'layers\.0\.extra'",
    "weight float next to SCB": r"layers\.0\.weight: expected int8 \(next to 'layers\.0\.SCB'\), got float32",
    "SCB 2-D": r"layers\.1\.SCB: expected float32 of shape \(40,\)",
    "weight_format float": r"layers\.0\.weight_format: expected a uint8 scalar, got float32",
    "float weight shape": r"layers\.2\.weight: expected shape \(out, in\) = \(16, 40\), got \(16, 41\)",
}


@pytest.mark.parametrize("how", list(BAD))
def test_bad_file_leaves_torch_model_unchanged(saved, tmp_path, how):
    _, path = saved
    tensors, info = ckpt.load_file(path)
    bad = tmp_path / "bad.safetensors"
    ckpt.save_file(_edit(tensors, how), bad, threshold=THRESHOLD)
    model = quantized_torch_model(1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=BAD[how]) as e:
        lt8.torch.load_quantized(model, bad)
    assert "nothing was loaded" in str(e.value) and str(bad) in str(e.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "how",
    [
        "weight shape",
        "SCB float16",
        "weight_format 9",
        "bias shape",
        "missing bias",
        "unexpected key",
    ],
)
def test_bad_file_into_jax_names_the_key(saved, tmp_path, how):
    _, path = saved
    tensors, _ = ckpt.load_file(path)
    bad = tmp_path / "bad.safetensors"
    ckpt.save_file(_edit(tensors, how), bad)
    like = flax_template()
    # The torch messages, but for the key-set ones (JAX names the key its own way).
    match = {
        "missing bias": r"missing key 'layers\.1\.bias'",
        "unexpected key": r"unexpected keys .*'layers\.0\.extra'",
    }.get(how, BAD[how])
    with pytest.raises(ValueError, match=match):
        lt8.jax.load_variables(bad, like=like)


def test_non_strict_load_skips_unknown_keys_but_checks_the_rest(saved, tmp_path, rng):
    model, path = saved
    tensors, _ = ckpt.load_file(path)
    extra = tmp_path / "extra.safetensors"
    ckpt.save_file(_edit(_edit(tensors, "unexpected key"), "missing bias"), extra)
    fresh = quantized_torch_model(1)
    bias1 = fresh.layers[1].bias.detach().clone()
    result = lt8.torch.load_quantized(fresh, extra, strict=False)
    assert result.missing_keys == ["layers.1.bias"] and result.unexpected_keys == ["layers.0.extra"]
    assert torch.equal(fresh.layers[1].bias, bias1) and torch.equal(
        fresh.layers[1].weight, model.layers[1].weight
    )
    bad = tmp_path / "bad.safetensors"
    ckpt.save_file(_edit(tensors, "weight shape"), bad)
    with pytest.raises(ValueError, match=r"layers\.0\.weight"):
        lt8.torch.load_quantized(fresh, bad, strict=False)


def test_save_writes_no_stray_files(tmp_path):
    ckpt.save_file(
        {"weight": np.zeros((2, 2), np.int8), "SCB": np.ones(2, np.float32)},
        tmp_path / "a.safetensors",
    )
    ckpt.save_file(
        {"weight": np.ones((2, 2), np.int8), "SCB": np.ones(2, np.float32)},
        tmp_path / "a.safetensors",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
    assert int(ckpt.load_file(tmp_path / "a.safetensors")[0]["weight"][0, 0]) == 1


def test_several_problems_are_reported_together(saved, tmp_path):
    _, path = saved
    tensors, _ = ckpt.load_file(path)
    bad = tmp_path / "bad.safetensors"
    ckpt.save_file(_edit(_edit(tensors, "weight int16"), "bias shape"), bad)
    with pytest.raises(ValueError, match=r"(?s)layers\.1\.weight.*layers\.2\.bias"):
        lt8.torch.load_quantized(quantized_torch_model(1), bad)


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    model = quantized_torch_model(1)
    before = snapshot(model)
    for n in (len(data) - 1, len(data) // 2, 40, 5, 0):
        cut = tmp_path / f"cut{n}.safetensors"
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=f"{cut}: not a readable safetensors file"):
            lt8.torch.load_quantized(model, cut)
        with pytest.raises(ValueError, match="truncated or corrupt"):
            lt8.jax.load_variables(cut)
        assert_unchanged(model, before)
    with pytest.raises(FileNotFoundError):
        ckpt.load_file(tmp_path / "nope.safetensors")


def test_not_an_lt8_file(tmp_path):
    model = quantized_torch_model(1)
    before = snapshot(model)
    unrelated = tmp_path / "unrelated.safetensors"
    safetensors_numpy.save_file(
        {"embeddings": np.zeros((4, 4), np.float32), "step": np.array(3)}, unrelated
    )
    with pytest.raises(ValueError, match="not an lt8 or bitsandbytes 8-bit checkpoint"):
        lt8.torch.load_quantized(model, unrelated)
    other = tmp_path / "other.safetensors"
    safetensors_numpy.save_file(
        {"weight": np.zeros((2, 2), np.int8), "SCB": np.ones(2, np.float32)},
        other,
        metadata={"format": "gguf"},
    )
    with pytest.raises(ValueError, match="names the format 'gguf'"):
        lt8.torch.load_quantized(model, other)
    newer = tmp_path / "newer.safetensors"
    safetensors_numpy.save_file(
        {"weight": np.zeros((2, 2), np.int8), "SCB": np.ones(2, np.float32)},
        newer,
        metadata={"format": ckpt.FORMAT_NAME, "format_version": "2"},
    )
    with pytest.raises(ValueError, match="format version 2 is newer"):
        lt8.jax.load_variables(newer)
    badmeta = tmp_path / "badmeta.safetensors"
    safetensors_numpy.save_file(
        {"x": np.zeros(2, np.float32)},
        badmeta,
        metadata={"format": ckpt.FORMAT_NAME, "format_version": "1", "threshold": "[1]"},
    )
    with pytest.raises(ValueError, match="threshold"):
        ckpt.read_info(badmeta)
    assert_unchanged(model, before)


def test_int8_file_into_unconverted_layer(saved):
    """An int8 layer of the file meets a float nn.Linear of the model: told to convert it."""
    _, path = saved
    torch.manual_seed(1)
    model = TorchMLP()
    before = snapshot(model)
    with pytest.raises(ValueError, match="replace_linear"):
        lt8.torch.load_quantized(model, path)
    assert_unchanged(model, before)


# --- bitsandbytes files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_bitsandbytes_file_without_lt8_metadata(saved, tmp_path, rng, metadata):
    from safetensors.torch import save_file

    model, _ = saved
    sd = {
        k: v for k, v in model.state_dict().items() if not k.endswith("weight_format")
    }  # older bnb
    path = tmp_path / "bnb.safetensors"
    save_file(sd, path, metadata=metadata)
    info = ckpt.read_info(path)
    assert (
        info.format_version is None and not info.is_lt8 and info.threshold_for("layers.0") is None
    )
    fresh = quantized_torch_model(1)
    lt8.torch.load_quantized(fresh, path)
    x = inputs(rng)
    np.testing.assert_array_equal(torch_out(fresh, x), torch_out(model, x))
    like = flax_template()
    y = flax_apply(lt8.jax.load_variables(path, like=like), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), torch_out(model, x))


def test_tiled_bitsandbytes_weight(tmp_path, rng):
    """An old bitsandbytes file with a col_turing weight loads, restored to row-major."""
    from layout_reference import to_layout_ref as to_layout_reference

    model = quantized_torch_model(0)
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    CB = tensors["layers.1.weight"]
    tensors["layers.1.weight"] = to_layout_reference(CB, "col_turing")
    tensors["layers.1.weight_format"] = np.array(ckpt.WEIGHT_FORMATS["col_turing"], np.uint8)
    path = tmp_path / "tiled.safetensors"
    safetensors_numpy.save_file(tensors, path)
    t, _ = ckpt.load_file(path)
    assert ckpt.validate_linear(t, "layers.1", SIZES[2], SIZES[1]) == "col_turing"
    with pytest.raises(ValueError, match="padded"):
        ckpt.validate_linear(t, "layers.1", SIZES[2], SIZES[1] + 40)

    fresh = quantized_torch_model(1)
    lt8.torch.load_quantized(fresh, path)
    np.testing.assert_array_equal(fresh.layers[1].weight.numpy(), CB)
    like = flax_template()
    variables = lt8.jax.load_variables(path, like=like)
    np.testing.assert_array_equal(np.asarray(variables["int8"]["layers.1"]["CB"]), CB)
    with pytest.raises(ValueError, match="like="):
        lt8.jax.load_variables(path)


def test_float_checkpoint_is_quantized_on_load(tmp_path, rng):
    """An lt8 file of float weights (e.g. saved before quantizing) loads into int8 layers."""
    torch.manual_seed(0)
    fp = TorchMLP()
    path = tmp_path / "fp.safetensors"
    ckpt.save_file(fp.state_dict(), path)
    model = quantized_torch_model(1)
    lt8.torch.load_quantized(model, path)
    ref = lt8.torch.replace_linear(fp, threshold=THRESHOLD, skip_modules=())
    x = inputs(rng)
    np.testing.assert_array_equal(torch_out(model, x), torch_out(ref, x))
    like = flax_template()
    y = flax_apply(lt8.jax.load_variables(path, like=like), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), torch_out(ref, x))


def test_bfloat16_tensors_round_trip(tmp_path):
    t = {"a": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) / 3}
    path = tmp_path / "bf16.safetensors"
    ckpt.save_file(t, path)
    back, _ = ckpt.load_file(path)
    assert back["a"].dtype.name == "bfloat16"
    assert torch.equal(lt8.torch.checkpoint.from_numpy(back["a"]), t["a"])


# --- every bad file leaves an NNX module as it was -------------------------------------------------

# The key each edit of _edit breaks (the JAX loaders word some messages their own way).
BAD_KEY = {
    "missing bias": "layers.1.bias",
    "missing SCB": "layers.1.weight",
    "missing weight": "layers.2.weight",
    "weight shape": "layers.0.weight",
    "SCB shape": "layers.2.SCB",
    "bias shape": "layers.2.bias",
    "weight int16": "layers.1.weight",
    "SCB float16": "layers.1.SCB",
    "bias int32": "layers.0.bias",
    "weight_format 9": "layers.2.weight_format",
    "weight_format int64": "layers.2.weight_format",
    "unexpected key": "layers.0.extra",
    "weight float next to SCB": "layers.0.weight",
    "SCB 2-D": "layers.1.SCB",
    "weight_format float": "layers.0.weight_format",
    "float weight shape": "layers.2.weight",
}


def nnx_mlp(seed: int):
    """An NNX twin of TorchMLP: Linear8bit layers in an nnx.List (checkpoint keys layers.i.*)."""
    nnx = pytest.importorskip("flax.nnx")
    from lt8.jax.nnx import Linear8bit

    gen = np.random.default_rng(seed)

    def init(key, shape, dtype):
        return jnp.asarray(gen.standard_normal(shape), dtype)

    class NnxMLP(nnx.Module):
        def __init__(self):
            self.layers = nnx.List(
                [
                    Linear8bit(
                        a,
                        b,
                        threshold=THRESHOLD,
                        kernel_init=init,
                        bias_init=init,
                        rngs=nnx.Rngs(seed),
                    )
                    for a, b in zip(SIZES[:-1], SIZES[1:])
                ]
            )

    return NnxMLP()


def nnx_snapshot(module) -> list:
    nnx = pytest.importorskip("flax.nnx")
    return [
        (path, np.array(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(module))
    ]


def assert_nnx_unchanged(module, before: list) -> None:
    after = nnx_snapshot(module)
    assert [p for p, _ in after] == [p for p, _ in before]
    for (path, a), (_, b) in zip(after, before):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{jax.tree_util.keystr(path)} changed"


def test_bad_keys_cover_every_edit():
    assert set(BAD_KEY) == set(BAD)


@pytest.mark.parametrize("how", list(BAD))
def test_bad_file_leaves_nnx_module_unchanged(saved, tmp_path, how):
    import re

    _, path = saved
    tensors, _ = ckpt.load_file(path)
    bad = tmp_path / "bad.safetensors"
    ckpt.save_file(_edit(tensors, how), bad)
    module = nnx_mlp(3)
    before = nnx_snapshot(module)
    with pytest.raises(ValueError, match=re.escape(BAD_KEY[how])):
        lt8.jax.load_variables(bad, like=module)
    assert_nnx_unchanged(module, before)


def test_truncated_file_leaves_nnx_module_unchanged(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    module = nnx_mlp(3)
    before = nnx_snapshot(module)
    for n in (len(data) - 1, len(data) // 2, 9):
        cut = tmp_path / f"cut{n}.safetensors"
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            lt8.jax.load_variables(cut, like=module)
        assert_nnx_unchanged(module, before)
    assert lt8.jax.load_variables(path, like=module) is module  # the good file still loads


def test_int8_file_into_float_master_weights_is_refused(saved):
    """A model converted with has_fp16_weights=True keeps float weights: an int8 file cannot go
    there, and the model stays as it was."""
    _, path = saved
    torch.manual_seed(3)
    model = lt8.torch.replace_linear(
        TorchMLP(), threshold=THRESHOLD, skip_modules=(), has_fp16_weights=True
    )
    before = snapshot(model)
    with pytest.raises(ValueError, match="not quantized"):
        lt8.torch.load_quantized(model, path)
    assert_unchanged(model, before)


# --- Linear8bitLt.load_state_dict: atomic per layer ------------------------------------------------


def one_layer(seed: int, has_fp16_weights: bool = False, bias: bool = True):
    torch.manual_seed(seed)
    layer = lt8.nn.Linear8bitLt(
        24, 10, bias=bias, has_fp16_weights=has_fp16_weights, threshold=THRESHOLD
    )
    return layer if has_fp16_weights else layer.to("cpu")


def _drop(sd, *keys):
    return {k: v for k, v in sd.items() if k not in keys}


GOOD = one_layer(100).state_dict()
FLOAT_GOOD = nn.Linear(24, 10).state_dict()
LAYER_BAD = {  # state dict -> (error type, what the message must name)
    "missing weight": (
        _drop(GOOD, "weight"),
        RuntimeError,
        r'Missing key\(s\) in state_dict: "weight"',
    ),
    "missing bias": (
        _drop(GOOD, "bias"),
        RuntimeError,
        r'(?s)nothing was loaded.*Missing key\(s\) in state_dict: "bias"',
    ),
    "missing SCB": (
        _drop(GOOD, "SCB", "weight_format"),
        RuntimeError,
        r"weight: an int8 weight needs its scales 'SCB'",
    ),
    "unexpected key": (
        {**GOOD, "extra": torch.zeros(2)},
        RuntimeError,
        r'Unexpected key\(s\) in state_dict: "extra"',
    ),
    "weight shape": (
        {**GOOD, "weight": torch.zeros(10, 23, dtype=torch.int8)},
        RuntimeError,
        r"weight: expected shape \(out, in\) = \(10, 24\), got \(10, 23\)",
    ),
    "weight int16": (
        {**GOOD, "weight": torch.zeros(10, 24, dtype=torch.int16)},
        RuntimeError,
        r"weight: expected int8 \(next to 'SCB'\), got int16",
    ),
    "weight int32, no SCB": (
        _drop({**GOOD, "weight": torch.zeros(10, 24, dtype=torch.int32)}, "SCB", "weight_format"),
        RuntimeError,
        r"weight: expected a float weight \(or an int8 one with 'SCB'\), got int32",
    ),
    "SCB shape": (
        {**GOOD, "SCB": torch.ones(9)},
        RuntimeError,
        r"SCB: expected float32 of shape \(10,\), got float32 of shape \(9,\)",
    ),
    "SCB int": (
        {**GOOD, "SCB": torch.ones(10, dtype=torch.int32)},
        RuntimeError,
        r"SCB: expected float32 of shape \(10,\), got int32",
    ),
    "bias shape": (
        {**GOOD, "bias": torch.zeros(3)},
        RuntimeError,
        r"bias: expected a float tensor of shape \(10,\)",
    ),
    "bias int": (
        {**GOOD, "bias": torch.zeros(10, dtype=torch.int64)},
        RuntimeError,
        r"bias: expected a float tensor",
    ),
    "weight_format 9": (
        {**GOOD, "weight_format": torch.tensor(9, dtype=torch.uint8)},
        RuntimeError,
        r"weight_format: expected one of \[0, 1, 2, 3\].*got 9",
    ),
    "weight_format float": (
        {**GOOD, "weight_format": torch.tensor(0.5)},
        RuntimeError,
        r"weight_format: expected a uint8 scalar, got float32",
    ),
    "weight_format 2 values": (
        {**GOOD, "weight_format": torch.zeros(2, dtype=torch.uint8)},
        RuntimeError,
        r"weight_format: expected a uint8 scalar, got uint8 of shape \(2,\)",
    ),
    "tiled weight size": (
        {**GOOD, "weight_format": torch.tensor(1, dtype=torch.uint8)},
        RuntimeError,
        r"weight: a col32 weight of \(out, in\) = \(10, 24\) is a padded \(10, 32\) buffer \(320 elements\), got shape \(10, 24\)",
    ),
    "float weight shape": (
        {**FLOAT_GOOD, "weight": torch.zeros(10, 25)},
        RuntimeError,
        r"weight: expected shape \(out, in\) = \(10, 24\), got \(10, 25\)",
    ),
    "float bias shape": (
        {**FLOAT_GOOD, "bias": torch.zeros(11)},
        RuntimeError,
        r"bias: expected a float tensor of shape",
    ),
    "float checkpoint, bias missing": (
        _drop(FLOAT_GOOD, "bias"),
        RuntimeError,
        r'Missing key\(s\).*"bias"',
    ),
}


@pytest.mark.parametrize("how", list(LAYER_BAD))
def test_layer_load_state_dict_is_atomic(how):
    """Every bad state dict raises naming the key and leaves weight, SCB and bias as they were."""
    sd, exc, match = LAYER_BAD[how]
    layer = one_layer(0)
    before = snapshot(layer)
    with pytest.raises(exc, match=match):
        layer.load_state_dict(sd)
    assert_unchanged(layer, before)
    x = torch.randn(3, 24)
    with torch.no_grad():  # the layer still computes with its own weight and scales
        ref = torch.ops.lt8.int8_linear(
            x, before["weight"], before["SCB"], before["bias"], THRESHOLD
        )
        assert torch.equal(layer(x), ref)


@pytest.mark.parametrize("has_fp16_weights", [False, True], ids=["unquantized", "fp16_weights"])
def test_int8_state_dict_into_a_float_layer_is_refused(has_fp16_weights):
    torch.manual_seed(1)
    layer = lt8.nn.Linear8bitLt(
        24, 10, has_fp16_weights=has_fp16_weights, threshold=THRESHOLD
    )  # not moved
    before = snapshot(layer)
    match = "has_fp16_weights=True" if has_fp16_weights else "has not been quantized yet"
    with pytest.raises(RuntimeError, match=match):
        layer.load_state_dict(GOOD)
    with pytest.raises(
        RuntimeError, match="int8 weight needs its scales 'SCB'"
    ):  # would copy int8 values as floats
        layer.load_state_dict(_drop(GOOD, "SCB", "weight_format"))
    assert_unchanged(layer, before)


def test_layer_load_state_dict_good_cases():
    """What must load: the same layer's state dict (exactly), a float one (quantized on the way
    in), a non-strict one without bias (the rest loads), and with assign=True."""
    src = one_layer(7)
    for kw in ({}, {"assign": True}):
        layer = one_layer(0)
        layer.load_state_dict(src.state_dict(), **kw)
        assert isinstance(layer.weight, lt8.nn.Int8Params)
        assert_unchanged(layer, snapshot(src))
    fp = nn.Linear(24, 10)
    layer = one_layer(0)
    layer.load_state_dict({k: v.double() for k, v in fp.state_dict().items()})  # float64 too
    CB, SCB, _ = torch.ops.lt8.quantize_rows(fp.weight.detach(), 0.0)
    assert torch.equal(layer.weight.data, CB) and torch.equal(layer.weight.SCB, SCB)
    layer = one_layer(0)
    bias = layer.bias.detach().clone()
    result = layer.load_state_dict(_drop(src.state_dict(), "bias"), strict=False)
    assert result.missing_keys == ["bias"]
    assert torch.equal(layer.weight.data, src.weight.data) and torch.equal(layer.bias, bias)
    before = snapshot(layer)
    with pytest.raises(RuntimeError, match="missing key 'weight'"):  # even when not strict
        layer.load_state_dict(_drop(GOOD, "weight"), strict=False)
    assert_unchanged(layer, before)


def test_variables_from_torch_bad_state_dicts():
    sd = {k: v.numpy() for k, v in GOOD.items()}
    with pytest.raises(ValueError, match=r"weight is int8 but the state dict has no SCB"):
        Dense8bit.variables_from_torch(_drop(sd, "SCB"))
    with pytest.raises(ValueError, match=r"SCB must be 1-D"):
        Dense8bit.variables_from_torch({**sd, "SCB": sd["SCB"][None]})
    with pytest.raises(ValueError, match=r"weight must be int8 next to SCB"):
        Dense8bit.variables_from_torch({**sd, "weight": sd["weight"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"weight_format must be one of"):
        Dense8bit.variables_from_torch({**sd, "weight_format": np.array(7, np.uint8)})
    with pytest.raises(ValueError, match=r"pass in_features"):
        Dense8bit.variables_from_torch({**sd, "weight_format": np.array(2, np.uint8)})
    with pytest.raises(KeyError, match=r"no 'fc\.weight'"):
        Dense8bit.variables_from_torch(sd, prefix="fc.")

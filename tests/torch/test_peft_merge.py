"""PEFT's own merge API on lt8 int8 layers: ``merge_and_unload``, ``merge_adapter`` /
``unmerge_adapter``, ``safe_merge``, several adapters, ``adapter_names`` (lt8.torch.peft_lora,
registered by ``lt8.torch.lora.register_peft``), and ``merge_peft`` for models adapted with
PEFT's default layer.

The merged int8 weights are compared bit for bit with an independent float64 numpy reference:
the kernels' float32 dequantization of (CB, SCB) (``dequantize_rows_f32``), plus each adapter's
delta with one float32 rounding per addition, re-quantized by ``quantize_rows_ref``. The adapters'
A and B are drawn on coarse dyadic grids (A: k/64, B: k/256, |k| <= 63, rank <= 4, scaling a
power of two), so that ``scaling * B @ A`` is exact in float32 whatever order a BLAS sums it in:
the reference's delta then equals lt8's, and every rounding left is one the reference spells out.
Layer outputs are checked against the float64 op reference with ``linear_error_bound`` and
against the unmerged PEFT layer within a bound derived from the int8 quantization step.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from reference import (
    dequantize_rows_f32,
    linear_error_bound,
    linear_ref,
    quantize_rows_ref,
)

torch = pytest.importorskip("torch")
peft = pytest.importorskip(
    "peft", reason="peft is not installed (optional; lt8.torch.lora needs no PEFT)"
)

import lt8  # noqa: E402
from lt8.torch.lora import merge_peft, register_peft  # noqa: E402
from lt8.torch.peft_lora import LoraLinear8bitLt  # noqa: E402

THRESHOLD = 6.0
SIZES = [24, 40, 16, 4]  # layers "0" (24 -> 40), "2" (40 -> 16): int8; "4" (16 -> 4): float
INT8_LAYERS = ("0", "2")
FLOAT_LAYER = "4"
# adapter name -> (r, lora_alpha): scalings 2 and 1, exact
ADAPTERS = {"one": (4, 8), "two": (2, 2)}


def f32(a) -> np.ndarray:
    """``a`` rounded to float32, held as float64 (one float32 operation's rounding)."""
    return np.asarray(a, np.float64).astype(np.float32).astype(np.float64)


def float_model(rng) -> torch.nn.Module:
    layers = []
    for i, (k, n) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        lin = torch.nn.Linear(k, n)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(rng.uniform(-1, 1, (n, k)) / np.sqrt(k)))
            lin.bias.copy_(torch.from_numpy(rng.uniform(-0.1, 0.1, n)))
        layers += [lin, torch.nn.ReLU()] if i < len(SIZES) - 2 else [lin]
    return torch.nn.Sequential(*layers)


def int8_model(rng, device: str) -> torch.nn.Module:
    """The float model with layers "0" and "2" converted to lt8 int8 ("4" stays float)."""
    model = lt8.torch.replace_linear(
        float_model(rng), threshold=THRESHOLD, skip_modules=(FLOAT_LAYER,)
    )
    return model.to(device)


def lora_config(name: str, **kw) -> peft.LoraConfig:
    r, alpha = ADAPTERS[name]
    return peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=[*INT8_LAYERS, FLOAT_LAYER], **kw)


def peft_model(rng, device: str, names=("one",), register: bool = True):
    """An int8 model adapted by PEFT with adapters ``names`` on every layer, their A and B on
    the exact grids (nonzero B), all of them active."""
    model = int8_model(rng, device)
    configs = [lora_config(n) for n in names]
    if register:
        configs = [register_peft(c) for c in configs]
    pm = peft.get_peft_model(model, configs[0], adapter_name=names[0])
    for n, c in zip(names[1:], configs[1:]):
        pm.add_adapter(n, c)
    for layer in lora_layers(pm).values():
        for n in names:
            set_on_grid(layer, n, rng)
    pm.base_model.set_adapter(list(names))
    pm.eval()
    return pm


def set_on_grid(layer, name: str, rng) -> None:
    """A (r, in) := k/64, B (out, r) := k/256 with k ~ N(0, 16^2) rounded, |k| <= 63."""
    for mod, denom in ((layer.lora_A[name], 64), (layer.lora_B[name], 256)):
        k = np.clip(np.rint(rng.normal(0, 16, tuple(mod.weight.shape))), -63, 63)
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(k / denom))


def lora_layers(pm) -> dict:
    from peft.tuners.lora import LoraLayer

    return {
        name.rpartition(".")[2]: m for name, m in pm.named_modules() if isinstance(m, LoraLayer)
    }


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def delta_ref(layer, name: str) -> np.ndarray:
    """scaling * B @ A in float64: exact (the grids), so also lt8's float32 delta."""
    A, B = np64(layer.lora_A[name].weight), np64(layer.lora_B[name].weight)
    d = layer.scaling[name] * (B @ A)
    assert np.array_equal(d, f32(d)), "the adapters left the exact grid"
    return d


def int8_state(layer) -> tuple[np.ndarray, np.ndarray]:
    w = layer.get_base_layer().weight if hasattr(layer, "get_base_layer") else layer.weight
    assert w.dtype == torch.int8
    return w.data.cpu().numpy().copy(), w.SCB.cpu().numpy().copy()


def requantized_ref(CB, SCB, deltas, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(CB', SCB') = quantize(dequant(CB, SCB) + sign * delta_1 + ...), each addition rounded to
    float32, with the reference quantizer."""
    W = dequantize_rows_f32(CB, SCB)
    for d in deltas:
        W = f32(W + sign * d)
    q, absmax, _ = quantize_rows_ref(W)
    return q, absmax.astype(np.float32)


def assert_int8_equal(layer_or_base, ref) -> None:
    CB, SCB = int8_state(layer_or_base)
    q, s = ref
    bad = np.argwhere(CB != q)
    assert bad.size == 0, f"{len(bad)} int8 codes differ from the reference, first {bad[:5]}"
    np.testing.assert_array_equal(SCB, s)


def inputs(rng, k: int, m: int = 6) -> torch.Tensor:
    x = rng.normal(size=(m, k))
    x[1, 3] = 2 * THRESHOLD  # one outlier column, taken in float by LLM.int8()
    return torch.from_numpy(x.astype(np.float32))


def assert_matches_op_reference(base, x: torch.Tensor) -> None:
    """The layer's output against the float64 LLM.int8() reference of its own (CB, SCB)."""
    CB, SCB = int8_state(base)
    with torch.no_grad():
        y = np64(base(x.to(base.weight.device)))
    x64 = np64(x)
    ref = linear_ref(x64, CB, SCB, np64(base.bias), THRESHOLD)
    q = torch.ops.lt8.quantize_rows(x, THRESHOLD)[0].numpy()
    bound = linear_error_bound(x64, CB, SCB, ref, 2.0**-24, 0.0, THRESHOLD, q)
    assert np.all(np.abs(y - ref) <= bound), np.abs(y - ref).max()


def merge_step_bound(x: torch.Tensor, SCB_merged, deltas, W_ref) -> np.ndarray:
    """|merged(x) - unmerged(x)| bound from the int8 steps: merged = x^ @ W'.T, unmerged =
    x^ @ W.T + x @ D.T (x^: x with its non-outlier columns quantized, D the summed deltas),
    so the difference is x^ @ (W' - W - D).T + (x^ - x) @ D.T, where |W' - W - D| is at most
    half a step of the merged row (SCB' / 254) and |x^ - x| half a step of x's row; plus float32
    accumulation of both sides."""
    x64 = np64(x)
    q, scale, mask = quantize_rows_ref(x64, THRESHOLD)
    xhat = np.where(mask[None, :], x64, q * scale[:, None] / 127.0)
    slack = 1 + 2.0**-10  # the quantizer's float32 quotient, a few ulps off the exact one
    half_w = SCB_merged.astype(np.float64) / 254.0 * slack
    half_x = np.where(mask[None, :], 0.0, scale[:, None] / 254.0 * slack)
    D = np.abs(sum(deltas))
    K = x64.shape[1]
    mags = np.abs(x64) @ (np.abs(W_ref) + D).T + np.abs(xhat) @ np.abs(W_ref).T
    return (
        np.abs(xhat).sum(axis=1)[:, None] * half_w[None, :]
        + half_x @ D.T
        + (K + 8) * 2.0**-23 * mags
    )


# --- the layer PEFT builds ---------------------------------------------------------------------


def test_register_peft_makes_peft_build_lt8_layers(rng):
    pm = peft_model(rng, "cpu")
    layers = lora_layers(pm)
    assert all(type(layers[n]) is LoraLinear8bitLt for n in INT8_LAYERS)
    # the float layer keeps PEFT's own LoRA layer
    assert type(layers[FLOAT_LAYER]) is peft.tuners.lora.layer.Linear
    plain = peft_model(rng, "cpu", register=False)
    assert not any(isinstance(m, LoraLinear8bitLt) for m in plain.modules())
    cfg = peft.LoraConfig(r=2, target_modules=["0"])
    assert register_peft(cfg) is cfg
    with pytest.raises(TypeError, match="LoraConfig"):
        register_peft(peft.IA3Config(target_modules=["0"]))


def test_lt8_layer_forward_is_peft_s(rng):
    """Before any merge, lt8's layer computes exactly what PEFT's default layer computes."""
    seed = int(rng.integers(2**31))
    ours = peft_model(np.random.default_rng(seed), "cpu")
    theirs = peft_model(np.random.default_rng(seed), "cpu", register=False)
    x = inputs(rng, SIZES[0])
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert ours.state_dict().keys() == theirs.state_dict().keys()


# --- merge_and_unload --------------------------------------------------------------------------


def test_merge_and_unload_requantizes_bit_exact(rng, device):
    pm = peft_model(rng, device)
    layers = lora_layers(pm)
    before = {n: int8_state(layers[n]) for n in INT8_LAYERS}
    deltas = {n: delta_ref(layers[n], "one") for n in layers}
    params = {n: layers[n].get_base_layer().weight for n in INT8_LAYERS}
    biases = {n: np64(layers[n].get_base_layer().bias) for n in layers}
    W4 = np64(layers[FLOAT_LAYER].get_base_layer().weight)
    xs = {n: inputs(rng, layers[n].in_features) for n in INT8_LAYERS}
    with torch.no_grad():
        unmerged = {n: np64(layers[n](xs[n].to(device))) for n in INT8_LAYERS}

    merged = pm.merge_and_unload()

    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    for n in INT8_LAYERS:
        base = merged.get_submodule(n)
        assert isinstance(base, lt8.torch.Linear8bitLt)
        ref = requantized_ref(*before[n], [deltas[n]])
        assert_int8_equal(base, ref)
        assert not np.array_equal(ref[0], before[n][0])  # the merge did change the codes
        assert base.weight is params[n]  # written in place
        assert base.state.SCB is base.weight.SCB
        np.testing.assert_array_equal(np64(base.bias), biases[n])
        assert_matches_op_reference(base, xs[n].cpu())
        with torch.no_grad():
            y = np64(base(xs[n].to(device)))
        W = dequantize_rows_f32(*before[n])
        bound = merge_step_bound(xs[n], ref[1], [deltas[n]], W)
        assert np.all(np.abs(y - unmerged[n]) <= bound), np.abs(y - unmerged[n]).max()
    # the float layer: PEFT's own merge, W + delta in float32
    np.testing.assert_array_equal(
        np64(merged.get_submodule(FLOAT_LAYER).weight), f32(W4 + deltas[FLOAT_LAYER])
    )


def test_merged_model_output_tracks_the_adapted_one(rng, device):
    """Whole-model check: the merged int8 model against the unmerged PEFT model, relative to
    how far the adapters moved the output (a lost or truncated update is of that size)."""
    pm = peft_model(rng, device)
    x = inputs(rng, SIZES[0], m=16).to(device)
    with torch.no_grad():
        y = np64(pm(x))
        with pm.disable_adapter():
            y0 = np64(pm(x))
    merged = pm.merge_and_unload()
    with torch.no_grad():
        y1 = np64(merged(x))
    moved = np.abs(y - y0).max()
    assert moved > 0.05
    assert np.abs(y1 - y).max() < 0.1 * moved


# --- merge_adapter / unmerge_adapter -----------------------------------------------------------


def test_merge_adapter_then_unmerge_adapter(rng, device):
    pm = peft_model(rng, device)
    layers = lora_layers(pm)
    n = INT8_LAYERS[0]
    layer = layers[n]
    CB0, SCB0 = int8_state(layer)
    d = delta_ref(layer, "one")
    x = inputs(rng, layer.in_features).to(device)

    pm.merge_adapter()
    assert layer.merged and layer.merged_adapters == ["one"]
    merged_ref = requantized_ref(CB0, SCB0, [d])
    assert_int8_equal(layer, merged_ref)
    with torch.no_grad():  # merged: the LoRA layer is its base layer now
        assert torch.equal(layer(x), layer.get_base_layer()(x))

    pm.unmerge_adapter()
    assert not layer.merged and layer.merged_adapters == []
    unmerged_ref = requantized_ref(*merged_ref, [d], sign=-1.0)
    assert_int8_equal(layer, unmerged_ref)
    # Two roundings: not the original bits in general, but within the two half steps.
    W0, W2 = dequantize_rows_f32(CB0, SCB0), dequantize_rows_f32(*unmerged_ref)
    half_steps = (merged_ref[1].astype(np.float64) + unmerged_ref[1]) / 254 * (1 + 2.0**-10)
    assert np.all(np.abs(W2 - W0) <= half_steps[:, None] + 2.0**-22 * np.abs(W0))
    assert not layers[FLOAT_LAYER].merged


def test_merge_adapter_twice_warns_and_merges_nothing_more(rng):
    pm = peft_model(rng, "cpu")
    layer = lora_layers(pm)[INT8_LAYERS[1]]
    pm.merge_adapter()
    once = int8_state(layer)
    with pytest.warns(UserWarning, match="already merged"):
        pm.merge_adapter()
    assert_int8_equal(layer, once)
    assert layer.merged_adapters == ["one"]


# --- safe_merge ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["merge_and_unload", "merge_adapter", "merge_peft"])
def test_safe_merge_refuses_non_finite_and_leaves_the_layer(rng, how):
    # merge_peft: on PEFT's default layer (no register_peft), which lt8 merges itself there
    pm = peft_model(rng, "cpu", names=("one", "two"), register=how != "merge_peft")
    layers = lora_layers(pm)
    bad = layers[INT8_LAYERS[1]]
    with torch.no_grad():
        bad.lora_B["two"].weight[3, 0] = float("inf")
    before = int8_state(bad)
    bias = np64(bad.get_base_layer().bias)
    with pytest.raises(ValueError, match=r"adapter 'two'.*non-finite") as err:
        if how == "merge_and_unload":
            pm.merge_and_unload(safe_merge=True)
        elif how == "merge_adapter":
            pm.merge_adapter(safe_merge=True)
        else:
            merge_peft(pm, safe_merge=True)
    assert "'2'" in str(err.value)  # names the layer too
    assert_int8_equal(bad, before)
    np.testing.assert_array_equal(np64(bad.get_base_layer().bias), bias)
    assert not bad.merged
    # Without safe_merge the same merge goes through (PEFT's semantics): the inf row's scale
    # becomes non-finite.
    if how == "merge_peft":
        merge_peft(pm)
    else:
        pm.merge_adapter()
    assert not np.isfinite(int8_state(bad.get_base_layer())[1][3])


# --- several adapters ---------------------------------------------------------------------------


def test_two_adapters_merge_in_order(rng, device):
    seed = int(rng.integers(2**31))
    pm = peft_model(np.random.default_rng(seed), device, names=("one", "two"))
    layers = lora_layers(pm)
    before = {n: int8_state(layers[n]) for n in INT8_LAYERS}
    deltas = {n: [delta_ref(layers[n], a) for a in ("one", "two")] for n in INT8_LAYERS}
    merged = pm.merge_and_unload()
    for n in INT8_LAYERS:
        assert_int8_equal(merged.get_submodule(n), requantized_ref(*before[n], deltas[n]))

    # adapter_names: only "two"
    pm = peft_model(np.random.default_rng(seed), device, names=("one", "two"))
    merged = pm.merge_and_unload(adapter_names=["two"])
    for n in INT8_LAYERS:
        assert_int8_equal(merged.get_submodule(n), requantized_ref(*before[n], deltas[n][1:]))


def test_adapters_merged_one_call_at_a_time(rng):
    """merge_adapter(["one"]) then merge_adapter(["two"]): two re-quantizations; unmerge removes
    both at once."""
    pm = peft_model(rng, "cpu", names=("one", "two"))
    layer = lora_layers(pm)[INT8_LAYERS[0]]
    CB0, SCB0 = int8_state(layer)
    da, db = delta_ref(layer, "one"), delta_ref(layer, "two")
    pm.merge_adapter(["one"])
    after_a = requantized_ref(CB0, SCB0, [da])
    assert_int8_equal(layer, after_a)
    with pytest.warns(UserWarning, match="Already following adapters were merged"):
        pm.merge_adapter(["two"])
    after_b = requantized_ref(*after_a, [db])
    assert_int8_equal(layer, after_b)
    assert layer.merged_adapters == ["one", "two"]
    pm.unmerge_adapter()
    assert_int8_equal(layer, requantized_ref(*after_b, [db, da], sign=-1.0))


def test_lora_bias_is_merged_into_the_float_bias(rng):
    model = int8_model(rng, "cpu")
    pm = peft.get_peft_model(
        model, register_peft(lora_config("one", lora_bias=True)), adapter_name="one"
    )
    layer = lora_layers(pm)[INT8_LAYERS[0]]
    set_on_grid(layer, "one", rng)
    with torch.no_grad():
        layer.lora_B["one"].bias.copy_(torch.from_numpy(rng.integers(-63, 64, 40) / 256))
    CB0, SCB0 = int8_state(layer)
    b0 = np64(layer.get_base_layer().bias)
    bB = np64(layer.lora_B["one"].bias)
    d = delta_ref(layer, "one")
    merged = pm.merge_and_unload()
    base = merged.get_submodule(INT8_LAYERS[0])
    assert_int8_equal(base, requantized_ref(CB0, SCB0, [d]))
    np.testing.assert_array_equal(np64(base.bias), f32(b0 + 2.0 * bB))


# --- PEFT's default layer, and merge_peft -------------------------------------------------------


def test_default_layer_cannot_merge_and_merge_peft_can(rng):
    """Without register_peft, PEFT's own layer over an int8 weight still fails (what the README
    says); the int8 weight is left as it was, and merge_peft merges it bit-exactly."""
    seed = int(rng.integers(2**31))
    pm = peft_model(np.random.default_rng(seed), "cpu", register=False)
    layers = lora_layers(pm)
    assert not any(isinstance(m, LoraLinear8bitLt) for m in layers.values())
    before = {n: int8_state(layers[n]) for n in INT8_LAYERS}
    deltas = {n: delta_ref(layers[n], "one") for n in INT8_LAYERS}
    with pytest.raises(RuntimeError, match="can't be cast"):
        pm.merge_and_unload()
    for n in INT8_LAYERS:
        assert_int8_equal(layers[n], before[n])

    merged = merge_peft(pm)
    for n in INT8_LAYERS:
        assert_int8_equal(merged.get_submodule(n), requantized_ref(*before[n], [deltas[n]]))

    # merge_peft on a registered model: the same bits as PEFT's merge_and_unload
    a = peft_model(np.random.default_rng(seed), "cpu")
    b = copy.deepcopy(a)
    ma, mb = merge_peft(a), b.merge_and_unload()
    for n in INT8_LAYERS:
        assert_int8_equal(ma.get_submodule(n), int8_state(mb.get_submodule(n)))
        # deepcopy gave the state its own copy of SCB; the merge points it at the weight's again
        assert mb.get_submodule(n).state.SCB is mb.get_submodule(n).weight.SCB


def test_delta_is_float32_whatever_the_adapters_dtype(rng):
    """bfloat16 adapters: their grid values are exact in bfloat16, their product needs float32
    (PEFT's get_delta_weight would round it to bfloat16 before the merge)."""
    pm = peft_model(rng, "cpu")
    layer = lora_layers(pm)[INT8_LAYERS[0]]
    layer.lora_A["one"].to(torch.bfloat16)
    layer.lora_B["one"].to(torch.bfloat16)
    CB0, SCB0 = int8_state(layer)
    d = delta_ref(layer, "one")
    assert not np.array_equal(d, np64(layer.get_delta_weight("one")))  # the rounding exists
    pm.merge_adapter()
    assert_int8_equal(layer, requantized_ref(CB0, SCB0, [d]))


def test_dora_adapter_is_refused_on_int8(rng):
    pytest.importorskip("bitsandbytes", reason="PEFT's DoRA reads Int8Params through bitsandbytes")
    model = int8_model(rng, "cpu")
    pm = peft.get_peft_model(
        model, register_peft(lora_config("one", use_dora=True)), adapter_name="one"
    )
    layer = lora_layers(pm)[INT8_LAYERS[0]]
    before = int8_state(layer)
    with pytest.raises(ValueError, match="variants"):
        pm.merge_adapter()
    assert_int8_equal(layer, before)


def test_float_master_weight_merges_as_peft_does(rng):
    """A Linear8bitLt that keeps a float weight (has_fp16_weights=True) merges exactly as
    PEFT merges a float nn.Linear: W + delta in float32."""
    layer = lt8.torch.Linear8bitLt(24, 8, has_fp16_weights=True).to("cpu")
    assert layer.weight.dtype == torch.float32
    model = torch.nn.Sequential(layer)
    pm = peft.get_peft_model(
        model, register_peft(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    )
    lora = lora_layers(pm)["0"]
    assert isinstance(lora, LoraLinear8bitLt)
    set_on_grid(lora, "default", rng)
    W = np64(layer.weight)
    d = delta_ref(lora, "default")
    merged = pm.merge_and_unload()
    np.testing.assert_array_equal(np64(merged[0].weight), f32(W + d))


def test_saved_adapter_loads_into_lt8_layer(rng, tmp_path):
    """The README's recipe for a saved adapter: its config registered by hand (the
    registration itself is not saved), the same outputs, and PEFT's merge re-quantizes."""
    seed = int(rng.integers(2**31))
    pm = peft_model(np.random.default_rng(seed), "cpu")
    x = inputs(rng, SIZES[0])
    with torch.no_grad():
        y = pm(x)
    pm.save_pretrained(str(tmp_path))  # a str: PEFT reads a Path as a Hub repo id
    path = str(tmp_path / "one")  # PEFT saves an adapter not named "default" in its own folder
    config = peft.LoraConfig.from_pretrained(path)
    assert config._custom_modules is None  # nothing of the registration was saved
    fresh = int8_model(np.random.default_rng(seed), "cpu")
    loaded = peft.PeftModel.from_pretrained(
        fresh, path, adapter_name="one", config=register_peft(config)
    )
    layers = lora_layers(loaded)
    assert all(type(layers[n]) is LoraLinear8bitLt for n in INT8_LAYERS)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    before = {n: int8_state(layers[n]) for n in INT8_LAYERS}
    deltas = {n: delta_ref(layers[n], "one") for n in INT8_LAYERS}
    merged = loaded.merge_and_unload()
    for n in INT8_LAYERS:
        assert_int8_equal(merged.get_submodule(n), requantized_ref(*before[n], [deltas[n]]))

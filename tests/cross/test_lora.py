"""LoRA adapters on frozen int8 weights: lt8.torch.lora (and PEFT), lt8.jax.lora with optax.

Each framework trains the adapters of a two-layer int8 MLP on a synthetic regression task (a
target that the frozen int8 model misses by a low-rank term) and must bring the loss down while
the int8 weights, their scales and the frozen biases stay bit-identical. The adapters' gradients
are checked against a float64 numpy reference of the LoRA backward through the int8 layer
(dL/dx = dL/dy @ W with W = CB * SCB / 127). Measured over 30 seeds (40 Adam steps, lr 1e-2):
final / initial loss at most 0.12 (torch), 0.15 (PEFT), 0.12 (JAX), medians ~0.08; bound 0.4.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import grad_input_ref

D_IN, D_HID, D_OUT, RANK, ALPHA = 32, 48, 8, 4, 8.0
SCALE = ALPHA / RANK
STEPS, LR, MAX_LOSS_RATIO = 40, 1e-2, 0.4


def _float_mlp(rng):
    """Float weights (out, in) and biases of a 32 -> 48 -> 8 MLP."""
    return {
        "fc1": (
            rng.normal(0, 0.3, (D_HID, D_IN)).astype(np.float32),
            rng.normal(0, 0.1, D_HID).astype(np.float32),
        ),
        "fc2": (
            rng.normal(0, 0.3, (D_OUT, D_HID)).astype(np.float32),
            rng.normal(0, 0.1, D_OUT).astype(np.float32),
        ),
    }


def _task(rng, n: int = 96):
    """Inputs (with two outlier columns above the threshold 6) and a low-rank target shift."""
    x = rng.normal(size=(n, D_IN)).astype(np.float32)
    cols = rng.choice(D_IN, 2, replace=False)
    x[:, cols] *= 5.0
    shift = (x @ rng.normal(0, 0.2, (D_IN, 2))) @ rng.normal(0, 1.0, (2, D_OUT))
    return x, shift.astype(np.float32)


def _lora_grads_ref(x, h, layers, G):
    """float64 dL/dA, dL/dB of both layers for L = sum(y * G), y = fc2(tanh(fc1(x))) where each
    fc is ``int8 base + SCALE * (in @ A.T) @ B.T`` (torch's orientation: A (r, in), B (out, r));
    ``h`` is the hidden activation tanh(z1) of the forward pass under test."""
    x, h, G = (np.asarray(a, np.float64) for a in (x, h, G))
    (_, _, A1, B1), (CB2, SCB2, A2, B2) = layers
    A1, B1, A2, B2 = (np.asarray(a, np.float64) for a in (A1, B1, A2, B2))
    out = {}
    dz2 = G
    out["fc2.B"] = SCALE * dz2.T @ (h @ A2.T)
    out["fc2.A"] = SCALE * (dz2 @ B2).T @ h
    dh = grad_input_ref(dz2, CB2, SCB2) + SCALE * (dz2 @ B2) @ A2
    dz1 = dh * (1.0 - h * h)
    out["fc1.B"] = SCALE * dz1.T @ (x @ A1.T)
    out["fc1.A"] = SCALE * (dz1 @ B1).T @ x
    return out


def _assert_close_rel(got, want, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert err < rtol, f"{what}: max relative error {err:.3g}"


# --- torch ----------------------------------------------------------------------------------------


@pytest.fixture
def tlora():
    torch = pytest.importorskip("torch")
    from lt8.torch import lora

    return torch, lora


def _torch_int8_mlp(torch, weights):
    from lt8.torch import replace_linear

    model = torch.nn.Sequential()
    for name, act in (("fc1", torch.nn.Tanh()), ("fc2", None)):
        w, b = weights[name]
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        model.add_module(name, lin)
        if act is not None:
            model.add_module("act", act)
    return replace_linear(model, threshold=6.0, skip_modules=())


def _frozen_snapshot(torch, model):
    from lt8.torch import Linear8bitLt

    return {
        n: (m.weight.data.clone(), m.weight.SCB.clone(), m.bias.detach().clone())
        for n, m in model.named_modules()
        if isinstance(m, Linear8bitLt)
    }


def _assert_frozen_unchanged(torch, model, snap):
    from lt8.torch import Linear8bitLt

    now = {n: m for n, m in model.named_modules() if isinstance(m, Linear8bitLt)}
    assert len(now) == len(snap)
    for (n, m), (CB, SCB, bias) in zip(now.items(), snap.values()):
        assert m.weight.dtype == torch.int8 and m.weight.SCB.dtype == torch.float32, n
        assert torch.equal(m.weight.data, CB) and torch.equal(m.weight.SCB, SCB), n
        assert torch.equal(m.bias.detach(), bias), n
        assert not m.weight.requires_grad and not m.bias.requires_grad, n


def _train_torch(torch, model, params, x, target):
    opt = torch.optim.Adam(params, lr=LR)
    losses = []
    for _ in range(STEPS):
        loss = ((model(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(((model(x) - target) ** 2).mean().item())
    return losses


def test_torch_lora_trains_on_frozen_int8(tlora, rng, device):
    torch, lora = tlora
    model = _torch_int8_mlp(torch, _float_mlp(rng)).to(device)
    x_np, shift = _task(rng)
    x = torch.from_numpy(x_np).to(device)
    with torch.no_grad():
        y0 = model(x)
    target = y0 + torch.from_numpy(shift).to(device)
    snap = _frozen_snapshot(torch, model)

    lora.add_lora(model, r=RANK, alpha=ALPHA)
    assert isinstance(model.fc1, lora.LoRALinear) and isinstance(model.fc2, lora.LoRALinear)
    params = lora.lora_parameters(model)
    assert len(params) == 4 and {id(p) for p in params} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    with torch.no_grad():
        assert torch.equal(model(x), y0)  # B = 0: a fresh adapter changes nothing

    losses = _train_torch(torch, model, params, x, target)
    assert losses[-1] < MAX_LOSS_RATIO * losses[0], losses
    _assert_frozen_unchanged(torch, model, snap)
    assert model.fc1.lora_B.weight.abs().sum() > 0


def test_torch_lora_gradients_match_float64_reference(tlora, rng):
    torch, lora = tlora
    model = lora.add_lora(_torch_int8_mlp(torch, _float_mlp(rng)), r=RANK, alpha=ALPHA)
    with torch.no_grad():
        for m in (model.fc1, model.fc2):
            m.lora_B.weight.normal_(0, 0.5)  # nonzero, so every gradient is
    x = torch.from_numpy(_task(rng, n=24)[0])
    G = torch.from_numpy(rng.normal(size=(24, D_OUT)).astype(np.float32))
    hidden = []
    model.act.register_forward_hook(lambda mod, inp, out: hidden.append(out.detach()))
    (model(x) * G).sum().backward()
    layers = [
        (
            m.base.weight.data.numpy(),
            m.base.weight.SCB.numpy(),
            m.lora_A.weight.detach().numpy(),
            m.lora_B.weight.detach().numpy(),
        )
        for m in (model.fc1, model.fc2)
    ]
    ref = _lora_grads_ref(x.numpy(), hidden[0].numpy(), layers, G.numpy())
    for name, m in (("fc1", model.fc1), ("fc2", model.fc2)):
        _assert_close_rel(m.lora_A.weight.grad, ref[f"{name}.A"], 1e-4, f"{name}.lora_A")
        _assert_close_rel(m.lora_B.weight.grad, ref[f"{name}.B"], 1e-4, f"{name}.lora_B")
        assert m.base.weight.grad is None and m.base.bias.grad is None


def test_torch_add_lora_targets_and_adapter_state(tlora, rng, tmp_path):
    torch, lora = tlora
    weights = _float_mlp(rng)
    model = lora.add_lora(_torch_int8_mlp(torch, weights), r=2, alpha=4.0, target_modules=["fc2"])
    assert isinstance(model.fc2, lora.LoRALinear) and not isinstance(model.fc1, lora.LoRALinear)
    assert not any(p.requires_grad for p in model.fc1.parameters())
    with torch.no_grad():
        model.fc2.lora_B.weight.normal_()
    sd = lora.lora_state_dict(model)
    assert sorted(sd) == ["fc2.lora_A.weight", "fc2.lora_B.weight"]
    torch.save(sd, tmp_path / "adapter.pt")
    other = lora.add_lora(_torch_int8_mlp(torch, weights), r=2, alpha=4.0, target_modules=["fc2"])
    result = other.load_state_dict(torch.load(tmp_path / "adapter.pt"), strict=False)
    assert not result.unexpected_keys
    x = torch.from_numpy(_task(rng, n=8)[0])
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
    # wrapping again leaves existing adapters alone
    again = lora.add_lora(model, r=2, target_modules=["fc*"])
    assert isinstance(again.fc1, lora.LoRALinear) and isinstance(again.fc2.base, torch.nn.Linear)
    assert not isinstance(again.fc2.base, lora.LoRALinear)


def test_torch_lora_errors(tlora):
    torch, lora = tlora
    with pytest.raises(TypeError, match="base"):
        lora.LoRALinear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="r must be"):
        lora.LoRALinear(torch.nn.Linear(4, 4), r=0)
    with pytest.raises(ValueError, match="no Linear8bitLt"):
        lora.add_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        lora.add_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), target_modules=["q_proj"])
    with pytest.raises(TypeError, match="target_modules"):
        lora.add_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), target_modules="0")


def test_peft_lora_trains_on_frozen_int8(rng, device):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip(
        "peft", reason="peft is not installed (optional; lt8.torch.lora needs no PEFT)"
    )
    from lt8.torch import Linear8bitLt

    model = _torch_int8_mlp(torch, _float_mlp(rng)).to(device)
    x_np, shift = _task(rng)
    x = torch.from_numpy(x_np).to(device)
    with torch.no_grad():
        target = model(x) + torch.from_numpy(shift).to(device)
    snap = _frozen_snapshot(torch, model)
    pm = peft.get_peft_model(
        model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["fc1", "fc2"])
    )
    bases = [m for m in pm.modules() if isinstance(m, Linear8bitLt)]
    assert len(bases) == 2  # PEFT wraps lt8's layers (nn.Linear subclasses) as they are
    params = [p for p in pm.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in pm.named_parameters() if p.requires_grad)
    losses = _train_torch(torch, pm, params, x, target)
    assert losses[-1] < MAX_LOSS_RATIO * losses[0], losses
    _assert_frozen_unchanged(torch, pm, snap)


# --- JAX ------------------------------------------------------------------------------------------


@pytest.fixture
def jlora():
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    optax = pytest.importorskip("optax")
    from lt8.jax import lora

    return jax, optax, lora


def _jax_model(lora):
    import flax.linen as nn
    import jax.numpy as jnp

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(lora.LoRADense8bit(D_HID, rank=RANK, alpha=ALPHA, name="fc1")(x))
            return lora.LoRADense8bit(D_OUT, rank=RANK, alpha=ALPHA, name="fc2")(h)

    return MLP()


def _jax_variables(jax, lora, weights, key):
    from lt8.jax import Dense8bit

    params, int8 = {}, {}
    for (name, (w, b)), k in zip(weights.items(), jax.random.split(key, 2)):
        base = Dense8bit.variables_from_dense({"kernel": w.T, "bias": b})
        v = lora.LoRADense8bit(w.shape[0], rank=RANK, alpha=ALPHA).variables_from_base(
            k, base, w.shape[1]
        )
        params[name], int8[name] = v["params"], v["int8"]
    return {"params": params, "int8": int8}


def test_jax_lora_trains_on_frozen_int8(jlora, rng):
    jax, optax, lora = jlora
    import jax.numpy as jnp

    model = _jax_model(lora)
    variables = _jax_variables(jax, lora, _float_mlp(rng), jax.random.key(int(rng.integers(2**31))))
    x_np, shift = _task(rng)
    x = jnp.asarray(x_np)
    y0 = model.apply(variables, x)
    # A fresh adapter is the plain int8 model: compare with the same layers as Dense8bit.
    from lt8.jax import Dense8bit

    def base(name):
        return {
            "params": variables["params"][name]["base"],
            "int8": variables["int8"][name]["base"],
        }

    plain = Dense8bit(D_OUT).apply(base("fc2"), jnp.tanh(Dense8bit(D_HID).apply(base("fc1"), x)))
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(plain))
    target = y0 + jnp.asarray(shift)

    int8 = variables["int8"]
    tx = lora.lora_optimizer(optax.adam(LR), variables["params"])
    params0 = variables["params"]

    def loss_fn(params):
        return jnp.mean((model.apply({"params": params, "int8": int8}, x) - target) ** 2)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state, losses = params0, tx.init(params0), []
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    losses.append(float(loss_fn(params)))
    assert losses[-1] < MAX_LOSS_RATIO * losses[0], losses

    mask = lora.lora_mask(params)
    for (path, new), old, is_lora in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves(params0),
        jax.tree_util.tree_leaves(mask),
    ):
        changed = not np.array_equal(np.asarray(new), np.asarray(old))
        assert changed == is_lora, jax.tree_util.keystr(path)  # only the adapters move
    for leaf in jax.tree_util.tree_leaves(int8):
        assert leaf.dtype in (jnp.int8, jnp.float32)
    assert int8["fc1"]["base"]["CB"].dtype == jnp.int8


def test_jax_lora_matches_torch_and_reference(jlora, rng):
    jax, _, lora = jlora
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp

    from lt8.torch import lora as tl

    weights = _float_mlp(rng)
    variables = _jax_variables(jax, lora, weights, jax.random.key(int(rng.integers(2**31))))
    for name in ("fc1", "fc2"):  # nonzero B, so every gradient is
        B = variables["params"][name]["lora_B"]
        variables["params"][name]["lora_B"] = jnp.asarray(
            rng.normal(0, 0.5, B.shape).astype(np.float32)
        )
    x_np = _task(rng, n=24)[0]
    G = rng.normal(size=(24, D_OUT)).astype(np.float32)
    model = _jax_model(lora)

    # torch with the same int8 weights and adapters (torch keeps A (r, in), B (out, r))
    tm = tl.add_lora(_torch_int8_mlp(torch, weights), r=RANK, alpha=ALPHA)
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            m, p = getattr(tm, name), variables["params"][name]
            assert np.array_equal(
                m.base.weight.data.numpy(), np.asarray(variables["int8"][name]["base"]["CB"])
            )
            m.lora_A.weight.copy_(torch.from_numpy(np.asarray(p["lora_A"]).T.copy()))
            m.lora_B.weight.copy_(torch.from_numpy(np.asarray(p["lora_B"]).T.copy()))
    xt = torch.from_numpy(x_np)
    yt = tm(xt)
    (yt * torch.from_numpy(G)).sum().backward()

    x = jnp.asarray(x_np)
    # XLA's default float32 matmul on GPUs is TF32-like; the adapters' float matmuls are
    # compared at full float32 precision here.
    with jax.default_matmul_precision("highest"):
        yj = model.apply(variables, x)
    _assert_close_rel(yj, yt.detach().numpy(), 1e-5, "JAX vs torch output")
    with jax.default_matmul_precision("highest"):
        grads = jax.grad(
            lambda p: jnp.sum(model.apply({"params": p, "int8": variables["int8"]}, x) * G)
        )(variables["params"])
        hid = jnp.tanh(
            lora.LoRADense8bit(D_HID, rank=RANK, alpha=ALPHA).apply(
                {"params": variables["params"]["fc1"], "int8": variables["int8"]["fc1"]}, x
            )
        )
    layers = [
        (
            np.asarray(variables["int8"][n]["base"]["CB"]),
            np.asarray(variables["int8"][n]["base"]["SCB"]),
            np.asarray(variables["params"][n]["lora_A"]).T,
            np.asarray(variables["params"][n]["lora_B"]).T,
        )
        for n in ("fc1", "fc2")
    ]
    ref = _lora_grads_ref(x_np, np.asarray(hid), layers, G)
    for name in ("fc1", "fc2"):
        gA, gB = np.asarray(grads[name]["lora_A"]).T, np.asarray(grads[name]["lora_B"]).T
        _assert_close_rel(gA, ref[f"{name}.A"], 1e-4, f"JAX {name}.lora_A")
        _assert_close_rel(gB, ref[f"{name}.B"], 1e-4, f"JAX {name}.lora_B")
        m = getattr(tm, name)
        _assert_close_rel(gA, m.lora_A.weight.grad.numpy(), 1e-4, f"JAX vs torch {name}.lora_A")
        _assert_close_rel(gB, m.lora_B.weight.grad.numpy(), 1e-4, f"JAX vs torch {name}.lora_B")
        # the frozen base bias gets a gradient in JAX (it is a param), which lora_optimizer zeroes
        assert not bool(lora.lora_mask(grads)[name]["base"]["bias"])


def test_jax_lora_errors(jlora):
    jax, optax, lora = jlora
    import jax.numpy as jnp

    with pytest.raises(ValueError, match="rank"):
        lora.LoRADense8bit(4, rank=0).init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="no lora_A or lora_B"):
        lora.lora_optimizer(optax.sgd(0.1), {"dense": {"kernel": jnp.ones((2, 2))}})
    from lt8.jax import Dense8bit

    base = Dense8bit.variables_from_dense({"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)})
    with pytest.raises(ValueError, match="expected \\(features, in\\)"):
        lora.LoRADense8bit(4).variables_from_base(jax.random.key(0), base, in_features=5)
    with pytest.raises(ValueError, match="int8"):
        lora.LoRADense8bit(4).variables_from_base(jax.random.key(0), {"params": {}}, in_features=3)

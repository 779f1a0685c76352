"""Writes lt8's Colab notebooks into notebooks/, executed, with their outputs and figures.

    python scripts/make_notebooks.py [--no-execute] [OUT_DIR]

The notebooks are generated so that their text and code review as plain Python; edit them here
and regenerate. Each is executed here (nbclient, a kernel on this interpreter, in a temporary
folder, the Colab install cell left out) and written with its outputs, so a reader on GitHub sees
the results and plots. tests/user/test_notebooks.py executes them again and checks the results.

Where the install cell gets lt8 is defined once, below (:data:`WHEEL_INDEX`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
from pathlib import Path

#: The GitHub owner of the repository. A placeholder until lt8 is published: the Colab badges
#: and the wheel index below are only reachable once github.com/{ORG}/lt8 exists.
ORG = "lt8-project"
REPO = f"{ORG}/lt8"
#: The one source the notebooks install lt8 from: the PEP 503 package index that
#: .github/workflows/wheels.yml publishes on the repository's GitHub Pages for every `v*` tag,
#: one index per variant: ``cu12`` (CUDA kernels for sm_75..sm_90, static CUDA runtime; its CPU
#: kernels run anywhere) and ``cpu`` (LT8_CUDA=OFF). ``pip install --index-url
#: {WHEEL_INDEX}/cu12 lt8`` installs a prebuilt manylinux wheel in seconds.
WHEEL_INDEX = f"https://{ORG}.github.io/lt8/whl"
INSTALL_TAG = "colab-install"
SENTINEL = "all checks passed"
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def md(s):
    from nbformat.v4 import new_markdown_cell

    return new_markdown_cell(textwrap.dedent(s).strip("\n"))


def code(*parts, tags=()):
    from nbformat.v4 import new_code_cell

    c = new_code_cell("\n\n".join(textwrap.dedent(p).strip("\n") for p in parts))
    if tags:
        c.metadata["tags"] = list(tags)
    return c


def colab_url(name: str) -> str:
    return f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}"


def header(name, title, blurb):
    from nbformat.v4 import new_markdown_cell

    return new_markdown_cell(
        "\n\n".join(
            [
                f"# {title}",
                f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})",
                textwrap.dedent(blurb).strip(),
                f"*The badge links to `github.com/{REPO}`: `{ORG}` is a placeholder organisation, "
                "to be replaced by the repository's real owner when it is published (one constant, "
                "`ORG` in `scripts/make_notebooks.py`). The outputs below were produced on a CPU "
                "by that script.*",
            ]
        )
    )


INTRO = """
**LLM.int8()** (Dettmers et al., 2022) runs a linear layer `y = x @ W.T + b` in 8 bits:
the weight `W` is stored as int8 rows plus one float32 scale per row (`CB`, `SCB`: a quarter of
float32's memory, half of float16's), and every activation row is quantized to int8 on the fly so
the product runs on int8 units. Large language models have a few hidden dimensions whose values are
20-100x larger than the rest ("outliers"); squeezed into the same int8 range they would crush
every other value to a handful of levels. So the columns of `x` holding any `|x| >= threshold`
(6 is the paper's choice) are multiplied in float instead: a handful of columns, nearly all of the accuracy.
"""

INSTALL_MD = """
## Install

On Colab, run the next cell: it installs lt8's prebuilt wheel (seconds) from the project's
package index, with CUDA kernels when the runtime has a GPU. Locally, `pip install -e .` in a
clone builds lt8 instead (see the README). The test suite skips this cell (its tag is
`colab-install`).
"""

INSTALL = f"""
%%bash
# lt8's wheel from its package index ({WHEEL_INDEX}, built by the repository's
# .github/workflows/wheels.yml): the cu12 wheel on a GPU runtime (CUDA kernels for sm_75..sm_90),
# else the cpu one. lt8 needs only numpy; Colab already has torch, jax, flax, optax, safetensors
# and matplotlib.
variant=cpu
if nvidia-smi -L >/dev/null 2>&1; then variant=cu12; fi
pip install -q --no-deps --index-url {WHEEL_INDEX}/$variant lt8 || {{
  echo "could not install lt8 from {WHEEL_INDEX}/$variant: see the README's 'Colab notebooks and wheels'" >&2
  exit 1
}}
"""

JAX_DEVICE_GUARD = """
# lt8's JAX ops run where lt8 has kernels: the CPU always, a GPU when lt8 was built with CUDA.
jax_device = jax.devices()[0]
if jax_device.platform != "cpu" and not lt8.has_cuda():
    print("this lt8 build has no CUDA kernels: JAX runs on the CPU")
    jax_device = jax.devices("cpu")[0]
    jax.config.update("jax_default_device", jax_device)
"""

# ------------------------------------------------------------------------------------------------

nb1 = [
    header(
        "01_torch_quickstart.ipynb",
        "lt8 quickstart: LLM.int8() in PyTorch",
        INTRO
        + """
This notebook converts a small PyTorch model to int8 with `lt8.torch.replace_linear`, measures
its memory and accuracy, and shows what the outlier threshold does. It runs on a CPU runtime in
seconds; on a GPU runtime it uses the GPU (`device = "cuda"`) with float16 activations.
""",
    ),
    md(INSTALL_MD),
    code(INSTALL, tags=["colab-install"]),
    md("## Setup"),
    code("""
    %matplotlib inline
    import copy

    import matplotlib.pyplot as plt
    import torch
    from torch import nn

    import lt8
    import lt8.functional as F8  # bitsandbytes' functional names (int8_vectorwise_quant, ...)

    device = "cuda" if torch.cuda.is_available() and lt8.has_cuda() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32  # activation dtype of the int8 model
    print(f"lt8 {lt8.__version__}, torch {torch.__version__}, device={device}, "
          f"lt8 CUDA kernels: {lt8.has_cuda()}")
    """),
    md("""
    ## A small model with outlier features

    A transformer-style MLP block (512 → 2048 → 512) with a small classification head. Its input
    mimics an LLM's hidden states: standard-normal values, except five feature columns that are
    40x larger in every row. As in trained models, the weights reading those columns are small,
    so the outliers do not swamp the output, but they do set each row's int8 scale.
    """),
    code("""
    torch.manual_seed(0)
    d_model, d_hidden, n_classes = 512, 2048, 10
    OUTLIER_COLS = torch.tensor([7, 101, 250, 333, 480])

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(d_model, d_hidden)
            self.fc2 = nn.Linear(d_hidden, d_model)
            self.head = nn.Linear(d_model, n_classes)

        def forward(self, x):
            return self.head(self.fc2(nn.functional.gelu(self.fc1(x))))

    model = Block()
    with torch.no_grad():
        model.fc1.weight[:, OUTLIER_COLS] /= 40.0
    model = model.to(device).eval()

    x = torch.randn(256, d_model, device=device)
    x[:, OUTLIER_COLS] *= 40.0
    with torch.no_grad():
        y_ref = model(x)  # float32 reference
    is_outlier = torch.zeros(d_model, dtype=torch.bool, device=device)
    is_outlier[OUTLIER_COLS] = True
    print(f"max |x|: {x[:, ~is_outlier].abs().max():.1f} over ordinary columns, "
          f"{x[:, is_outlier].abs().max():.1f} over the outlier columns")
    """),
    md("""
    ## Convert to int8

    `replace_linear` swaps every `nn.Linear` for an `lt8.nn.Linear8bitLt` (bitsandbytes' class
    name and checkpoint keys), quantizing its weight on the device it is on. We keep the small
    head in float, as one usually keeps an LLM's `lm_head`.
    """),
    code("""
    q_model = lt8.torch.replace_linear(copy.deepcopy(model).to(dtype), threshold=6.0,
                                       skip_modules=("head",))
    print(q_model)
    w = q_model.fc1.weight
    print("fc1 weight:", w.dtype, tuple(w.shape), "| row scales SCB:", w.SCB.dtype, tuple(w.SCB.shape))
    """),
    md("## Memory"),
    code("""
    def state_bytes(m):
        return sum(t.numel() * t.element_size() for t in m.state_dict().values())

    fp32_mb, int8_mb = state_bytes(model) / 2**20, state_bytes(q_model) / 2**20
    print(f"float32: {fp32_mb:6.2f} MiB")
    print(f"float16: {fp32_mb / 2:6.2f} MiB")
    print(f"lt8 int8: {int8_mb:5.2f} MiB  ({int8_mb / fp32_mb:.1%} of float32)")
    """),
    md("""
    ## Accuracy, with and without the outlier decomposition

    `threshold=0` turns the decomposition off: every column, outliers included, goes through
    int8 with one scale per row, and the row scale is set by the outliers.
    """),
    code("""
    def set_threshold(m, t):
        for mod in m.modules():
            if isinstance(mod, lt8.nn.Linear8bitLt):
                mod.state.threshold = float(t)

    @torch.no_grad()
    def rel_error(m):
        y = m(x.to(dtype)).float()
        return ((y - y_ref).norm() / y_ref.norm()).item()

    set_threshold(q_model, 0.0)
    err_plain = rel_error(q_model)
    set_threshold(q_model, 6.0)
    err_int8 = rel_error(q_model)
    print(f"relative error, plain int8 (threshold 0):  {err_plain:.4f}")
    print(f"relative error, LLM.int8() (threshold 6):  {err_int8:.4f}")

    with torch.no_grad():
        agree = (q_model(x.to(dtype)).argmax(-1) == y_ref.argmax(-1)).float().mean().item()
    print(f"int8 and float32 heads agree on {agree:.1%} of the predictions")
    """),
    md("""
    ## The outlier columns, and the error against the threshold

    Left: the largest `|x|` of each input column; the five outlier columns stand out far above
    the threshold. Right: the model's error as the threshold sweeps. Above the outliers'
    magnitude nothing is decomposed and the error climbs to plain int8's; far below it, many
    ordinary columns go through the float path too (more exact, but slower). Around 6 only the
    real outliers do.
    """),
    code("""
    thresholds = [1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256]
    errors, n_outliers = [], []
    for t in thresholds:
        set_threshold(q_model, t)
        errors.append(rel_error(q_model))
        _, _, cols = F8.int8_vectorwise_quant(x.to(dtype), threshold=t)  # fc1's outlier columns
        n_outliers.append(cols.numel())
    set_threshold(q_model, 6.0)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
    col_max = x.abs().amax(0).cpu()
    ax0.bar(range(d_model), col_max, width=1.0, color="tab:gray")
    ax0.bar(OUTLIER_COLS, col_max[OUTLIER_COLS], width=4.0, color="tab:red", label="outlier columns")
    ax0.axhline(6.0, color="tab:blue", ls="--", label="threshold = 6")
    ax0.set(yscale="log", xlabel="input feature (column of x)", ylabel="max |x| over the batch",
            title="fc1's input: a few outlier columns")
    ax0.legend()

    ax1.plot(thresholds, errors, "o-", label="LLM.int8()")
    ax1.axhline(err_plain, color="tab:red", ls="--", label="plain int8 (threshold 0)")
    for t, e, n in zip(thresholds, errors, n_outliers):
        ax1.annotate(str(n), (t, e), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax1.set(xscale="log", yscale="log", xlabel="threshold", ylabel="relative error vs float32",
            title="error against threshold (labels: fc1 outlier columns)")
    ax1.legend(loc="lower right")
    plt.tight_layout()
    plt.show()
    """),
    md("""
    ## Checkpoints

    A `Linear8bitLt`'s state dict holds bitsandbytes' keys: `weight` (int8, `(out, in)`),
    `SCB` (float32 row scales), `bias` and `weight_format` (0 = row-major). The same file loads
    into lt8's Flax layers: see `03_torch_to_jax.ipynb`.
    """),
    code("""
    for k, v in q_model.fc1.state_dict().items():
        print(f"fc1.{k:14s} {str(v.dtype):14s} {tuple(v.shape)}")
    """),
    md("## Checks (the test suite runs this notebook: a broken notebook fails here)"),
    code("""
    assert q_model.fc1.weight.dtype == torch.int8 and q_model.fc2.weight.dtype == torch.int8
    assert isinstance(q_model.head, nn.Linear) and not isinstance(q_model.head, lt8.nn.Linear8bitLt)
    assert int8_mb < 0.3 * fp32_mb, (int8_mb, fp32_mb)
    assert err_int8 < 0.05, err_int8
    assert err_plain > 3 * err_int8, (err_plain, err_int8)
    assert n_outliers[thresholds.index(6)] == len(OUTLIER_COLS)
    assert errors[-1] > 3 * errors[thresholds.index(6)]  # threshold above every outlier: plain int8
    print("all checks passed")
    """),
]

# ------------------------------------------------------------------------------------------------

nb2 = [
    header(
        "02_jax_flax_quickstart.ipynb",
        "lt8 quickstart: LLM.int8() in JAX and Flax",
        INTRO
        + """
In JAX, `lt8.jax.Dense8bit` is a drop-in for `flax.linen.Dense`. Its int8 weight and scales
live in their own variable collection, `"int8"`, beside `"params"` (the bias), so `jax.grad`
and optax only ever see float parameters. This notebook builds a Flax model on `Dense8bit`,
runs it under `jax.jit`, takes gradients, and fine-tunes a small adapter on top of frozen int8
weights. JAX uses its default backend (the GPU on a GPU runtime).
""",
    ),
    md(INSTALL_MD),
    code(INSTALL, tags=["colab-install"]),
    md("## Setup"),
    code(
        """
    %matplotlib inline
    import functools

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import optax

    import lt8
    from lt8.jax import Dense8bit
    """,
        JAX_DEVICE_GUARD,
        """
    print(f"lt8 {lt8.__version__}, jax {jax.__version__}, JAX runs on {jax_device.platform}, "
          f"lt8 CUDA kernels: {lt8.has_cuda()}")
    """,
    ),
    md("""
    ## A Flax model on `Dense8bit`

    One MLP definition serves both precisions: `quantized=False` builds it on `nn.Dense`
    (our "pretrained" float model), `quantized=True` on `Dense8bit`. The inputs have four outlier
    feature columns, 30x larger than the rest, as an LLM's hidden states do.
    """),
    code("""
    d_model, d_hidden = 256, 1024
    OUTLIER_COLS = jnp.array([3, 70, 150, 201])

    class MLP(nn.Module):
        quantized: bool = True
        threshold: float = 6.0

        @nn.compact
        def __call__(self, x):
            Dense = functools.partial(Dense8bit, threshold=self.threshold) if self.quantized else nn.Dense
            h = nn.relu(Dense(d_hidden, name="fc1")(x))
            return Dense(d_model, name="fc2")(h)

    def make_inputs(key, n):
        return jax.random.normal(key, (n, d_model)).at[:, OUTLIER_COLS].multiply(30.0)

    key_x, key_init, key_train = jax.random.split(jax.random.key(0), 3)
    x = make_inputs(key_x, 512)
    fp_params = MLP(quantized=False).init(key_init, x)["params"]
    # As in trained LLMs, the weights reading the outlier features are small.
    fp_params["fc1"]["kernel"] = fp_params["fc1"]["kernel"].at[OUTLIER_COLS].divide(30.0)
    y_ref = MLP(quantized=False).apply({"params": fp_params}, x)
    """),
    md("""
    ## Quantize the float parameters

    `Dense8bit.variables_from_dense` turns one `nn.Dense` parameter dict into `Dense8bit`
    variables: `params/bias` plus `int8/CB` (int8, `(out, in)`, the torch/bitsandbytes
    orientation) and `int8/SCB` (float32 row scales).
    """),
    code("""
    def quantize_params(fp_params):
        params, int8 = {}, {}
        for name, p in fp_params.items():
            v = Dense8bit.variables_from_dense(p)
            params[name], int8[name] = v["params"], v["int8"]
        return {"params": params, "int8": int8}

    variables = quantize_params(fp_params)
    print(jax.tree.map(lambda a: f"{a.dtype}{list(a.shape)}", variables))

    nbytes = lambda tree: sum(a.nbytes for a in jax.tree.leaves(tree))
    fp32_kib, int8_kib = nbytes(fp_params) / 1024, nbytes(variables) / 1024
    print(f"float32 params: {fp32_kib:.0f} KiB, Dense8bit variables: {int8_kib:.0f} KiB "
          f"({int8_kib / fp32_kib:.1%})")
    """),
    md("""
    ## Inference under `jax.jit`

    `threshold` is a static module attribute: `threshold=0` turns the outlier decomposition off.
    """),
    code("""
    def rel_error(y):
        return float(jnp.linalg.norm(y - y_ref) / jnp.linalg.norm(y_ref))

    forward = jax.jit(MLP(threshold=6.0).apply)
    err_int8 = rel_error(forward(variables, x))
    err_plain = rel_error(jax.jit(MLP(threshold=0.0).apply)(variables, x))
    print(f"relative error, plain int8 (threshold 0):  {err_plain:.4f}")
    print(f"relative error, LLM.int8() (threshold 6):  {err_int8:.4f}")
    """),
    md("""
    ## Gradients

    The int8 weights are constants; gradients flow to the inputs (straight through the
    quantization: `dx = dy @ W`) and to every float parameter. That is all an adapter needs.
    """),
    code("""
    def loss_of(params, x):
        return jnp.mean(MLP().apply({"params": params, "int8": variables["int8"]}, x) ** 2)

    g_params, g_x = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(variables["params"], x)
    print("grad wrt params:", jax.tree.map(lambda a: a.shape, g_params))
    print("grad wrt x:", g_x.shape, g_x.dtype)
    """),
    md("""
    ## Fine-tuning an adapter on frozen int8 weights

    The task drifted: the targets now come from a "teacher" whose `fc2` weight moved by a
    low-rank update. We keep `fc1` and `fc2` frozen in int8 and train a LoRA-style adapter
    (`h @ A @ B`, rank 8, `B` starting at zero) beside `fc2`, plus the biases, with optax's Adam.
    Only `"params"` is passed to `jax.grad` and to the optimizer.
    """),
    code("""
    RANK = 8

    class AdaptedMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(Dense8bit(d_hidden, name="fc1")(x))
            lora = nn.Dense(RANK, use_bias=False, name="lora_a")(h)
            lora = nn.Dense(d_model, use_bias=False, kernel_init=nn.initializers.zeros, name="lora_b")(lora)
            return Dense8bit(d_model, name="fc2")(h) + lora

    model = AdaptedMLP()
    adapter = model.init(key_init, x)["params"]
    params = {**variables["params"], "lora_a": adapter["lora_a"], "lora_b": adapter["lora_b"]}
    frozen = variables["int8"]  # never updated

    k1, k2 = jax.random.split(jax.random.key(1))
    delta = 0.05 * jax.random.normal(k1, (d_hidden, 4)) @ jax.random.normal(k2, (4, d_model)) / d_hidden**0.5
    teacher = {**fp_params, "fc2": {**fp_params["fc2"], "kernel": fp_params["fc2"]["kernel"] + delta}}

    def loss_fn(params, xb, yb):
        return jnp.mean((model.apply({"params": params, "int8": frozen}, xb) - yb) ** 2)

    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, key):
        xb = make_inputs(key, 128)
        yb = MLP(quantized=False).apply({"params": teacher}, xb)
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for step in range(200):
        params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(key_train, step))
        losses.append(float(loss))
    print(f"loss: step 0 {losses[0]:.2e} -> step {len(losses) - 1} {losses[-1]:.2e}")

    plt.figure(figsize=(6, 3.5))
    plt.semilogy(losses)
    plt.xlabel("step")
    plt.ylabel("MSE to the teacher")
    plt.title("LoRA adapter on frozen Dense8bit layers")
    plt.show()
    """),
    md("""
    ## The NNX twin

    For Flax NNX, `lt8.jax.nnx.Linear8bit` does the same; `from_linear` converts an `nnx.Linear`.
    Its `CB`/`SCB` are `Int8Weight` variables, not `nnx.Param`, so `nnx.grad` and optimizers
    filtering on `nnx.Param` skip them.
    """),
    code("""
    from flax import nnx
    from lt8.jax.nnx import Linear8bit

    fp_linear = nnx.Linear(d_model, 64, rngs=nnx.Rngs(0))
    q_linear = Linear8bit.from_linear(fp_linear, threshold=6.0)
    err_nnx = float(jnp.linalg.norm(q_linear(x) - fp_linear(x)) / jnp.linalg.norm(fp_linear(x)))
    print(f"Linear8bit: CB {q_linear.CB.get_value().dtype}{list(q_linear.CB.get_value().shape)}, "
          f"relative error {err_nnx:.4f}")
    """),
    md("## Checks (the test suite runs this notebook: a broken notebook fails here)"),
    code("""
    assert all(v["CB"].dtype == jnp.int8 for v in frozen.values())
    assert int8_kib < 0.3 * fp32_kib, (int8_kib, fp32_kib)
    assert err_int8 < 0.05 and err_plain > 3 * err_int8, (err_int8, err_plain)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves((g_params, g_x)))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    assert err_nnx < 0.05, err_nnx
    print("all checks passed")
    """),
]

# ------------------------------------------------------------------------------------------------

nb3 = [
    header(
        "03_torch_to_jax.ipynb",
        "lt8: quantize in PyTorch, serve in JAX",
        """
lt8 runs LLM.int8() (int8 weights with float32 row scales, float outlier columns) in PyTorch
and in JAX from **one** kernel library, and both read and write **one** checkpoint format: a
safetensors file with bitsandbytes' keys for every int8 layer,

| key | dtype | shape | meaning |
|---|---|---|---|
| `weight` | int8 | `(out, in)` | the quantized weight `CB`, row-major |
| `SCB` | float32 | `(out,)` | each weight row's absmax: `W ≈ CB * SCB / 127` |
| `bias` | float | `(out,)` | optional |
| `weight_format` | uint8 | `()` | 0 = row-major (1-3: old bitsandbytes tiled orders, converted on load) |

plus a small metadata entry naming the format, its version and the outlier threshold.

This notebook quantizes a model in PyTorch, saves it with `lt8.torch.save_quantized`, loads it
into a Flax model built on `lt8.jax.Dense8bit` with `lt8.jax.load_variables`, checks that JAX
computes the very same bits, and goes back the other way.
""",
    ),
    md(INSTALL_MD),
    code(INSTALL, tags=["colab-install"]),
    md("## Setup"),
    code(
        """
    import copy

    import flax.linen as fnn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from torch import nn

    import lt8
    from lt8.core import checkpoint
    from lt8.jax import Dense8bit
    """,
        JAX_DEVICE_GUARD,
        """
    device = "cuda" if torch.cuda.is_available() and lt8.has_cuda() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    jax_dtype = jnp.float16 if dtype == torch.float16 else jnp.float32
    print(f"torch runs on {device} ({dtype}), JAX on {jax_device.platform}")
    """,
    ),
    md("""
    ## 1. Quantize in PyTorch

    A three-layer MLP with ReLUs (exact in both frameworks, so every difference would be
    lt8's), converted by `replace_linear`: every `nn.Linear` becomes an int8 `Linear8bitLt`.
    """),
    code("""
    torch.manual_seed(0)
    SIZES = (512, 1024, 1024, 256)
    THRESHOLD = 6.0

    class TorchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:]))

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = torch.relu(x)
            return x

    float_model = TorchMLP().to(device).eval()
    torch_model = lt8.torch.replace_linear(copy.deepcopy(float_model).to(dtype), threshold=THRESHOLD,
                                           skip_modules=())
    print(torch_model)

    x = torch.randn(64, SIZES[0])
    x[:, [3, 77, 300]] *= 30.0  # a few outlier features
    with torch.no_grad():
        y_torch = torch_model(x.to(device, dtype)).float().cpu().numpy()
    """),
    md("""
    ## 2. Save

    `save_quantized` writes the model's state dict as one safetensors file, with the layers'
    outlier threshold in its metadata. `lt8.core.checkpoint.load_file` reads any such file as
    numpy arrays (no torch needed) and its metadata.
    """),
    code("""
    path = "mlp_int8.safetensors"
    lt8.torch.save_quantized(torch_model, path)

    tensors, info = checkpoint.load_file(path)
    for k in sorted(tensors)[:4]:
        print(f"{k:26s} {str(tensors[k].dtype):8s} {tensors[k].shape}")
    print(f"... {len(tensors)} tensors")
    print(f"format version {info.format_version}, threshold {info.threshold_for('layers.0')}")
    """),
    md("""
    ## 3. Load into Flax

    The same MLP in Flax, on `Dense8bit`, its layers named as torch's (`layers.0`, ...): that is
    how checkpoint keys find their layers. `load_variables(path, like=...)` reads each int8 layer
    into the `int8` collection (`CB`, `SCB`) and its bias into `params`, keeping the int8 bytes as
    they are (nothing is re-quantized), and checks every shape and dtype against `like`: here the
    model's variables from `jax.eval_shape`, which computes nothing. The threshold comes from the
    file's metadata.
    """),
    code("""
    class FlaxMLP(fnn.Module):
        threshold: float

        @fnn.compact
        def __call__(self, x):
            for i, features in enumerate(SIZES[1:]):
                x = Dense8bit(features, threshold=self.threshold, param_dtype=jax_dtype,
                              name=f"layers.{i}")(x)
                if i < len(SIZES) - 2:
                    x = fnn.relu(x)
            return x

    flax_model = FlaxMLP(threshold=checkpoint.read_info(path).threshold_for("layers.0"))
    like = jax.eval_shape(flax_model.init, jax.random.key(0), jnp.zeros((1, SIZES[0]), jax_dtype))
    variables = lt8.jax.load_variables(path, like=like)
    print(jax.tree.map(lambda a: f"{a.dtype}{list(a.shape)}", variables["int8"]["layers.0"]))
    """),
    md("""
    ## 4. Serve in JAX and compare

    Same int8 weights, same kernels, same threshold: the outputs are identical, bit for bit.
    (If torch and JAX ran on different kinds of device, say torch on the GPU and JAX on the
    CPU, they would agree to rounding instead.)
    """),
    code("""
    serve = jax.jit(flax_model.apply)
    x_jax = jnp.asarray(x.to(dtype).numpy())
    y_jax = np.asarray(serve(variables, x_jax), dtype=np.float32)

    max_abs_diff = float(np.abs(y_jax - y_torch).max())
    same_device_kind = (device == "cpu") == (jax_device.platform == "cpu")
    print(f"max |JAX - torch| = {max_abs_diff}  (torch on {device}, JAX on {jax_device.platform})")

    with torch.no_grad():
        y_float = float_model(x.to(device)).cpu().numpy()
    print(f"int8 vs float32 relative error: {np.linalg.norm(y_jax - y_float) / np.linalg.norm(y_float):.4f}")
    """),
    md("""
    ## 5. And back: JAX to PyTorch

    `save_variables` writes Flax variables in the same format, so a model quantized or
    fine-tuned in JAX loads into `Linear8bitLt` with `load_quantized`.
    """),
    code("""
    jax_path = "mlp_from_jax.safetensors"
    lt8.jax.save_variables(jax_path, variables, threshold=flax_model.threshold)

    back = lt8.torch.replace_linear(TorchMLP().to(device).to(dtype).eval(), threshold=THRESHOLD, skip_modules=())
    lt8.torch.load_quantized(back, jax_path)
    with torch.no_grad():
        y_back = back(x.to(device, dtype)).float().cpu().numpy()
    print("round trip identical:", np.array_equal(y_back, y_torch))
    """),
    md("""
    A checkpoint that does not fit the model (other shapes, dtypes, keys; a truncated file) is
    refused with an error naming the problem, before anything is copied: the model stays as it was.
    """),
    code("""
    wrong = TorchMLP()
    wrong.layers[2] = nn.Linear(SIZES[2], 128)  # a last layer of another size
    wrong = lt8.torch.replace_linear(wrong.to(device).to(dtype).eval(), threshold=THRESHOLD, skip_modules=())
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    try:
        lt8.torch.load_quantized(wrong, path)
    except ValueError as e:
        refused = str(e)
        print(refused)
    unchanged = all(torch.equal(v, wrong.state_dict()[k]) for k, v in before.items())
    print("model unchanged:", unchanged)
    """),
    md("## Checks (the test suite runs this notebook: a broken notebook fails here)"),
    code("""
    assert set(tensors) == {f"layers.{i}.{k}" for i in range(3) for k in ("weight", "SCB", "bias", "weight_format")}
    assert tensors["layers.0.weight"].dtype == np.int8 and int(tensors["layers.0.weight_format"]) == 0
    assert info.format_version == checkpoint.FORMAT_VERSION and info.threshold_for("layers.2") == THRESHOLD
    for i in range(3):
        assert np.array_equal(np.asarray(variables["int8"][f"layers.{i}"]["CB"]), tensors[f"layers.{i}.weight"])
    if same_device_kind:
        assert max_abs_diff == 0.0, max_abs_diff
    else:
        assert max_abs_diff < 1e-2 * np.abs(y_torch).max(), max_abs_diff
    assert np.array_equal(y_back, y_torch)
    assert "layers.2.weight: expected shape (out, in) = (128, 1024)" in refused and unchanged
    print("all checks passed")
    """),
]


NOTEBOOKS = {
    "01_torch_quickstart.ipynb": nb1,
    "02_jax_flax_quickstart.ipynb": nb2,
    "03_torch_to_jax.ipynb": nb3,
}


def kernel_manager(tmp: Path):
    """A KernelManager whose kernel is ipykernel on this interpreter, whatever kernelspecs the
    machine has installed (a user's "python3" spec may point at another Python)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = Path(tmp) / "kernels" / "lt8-nb"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "lt8",
                "language": "python",
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(Path(tmp) / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="lt8-nb", kernel_spec_manager=ksm)


def execute(nb, workdir: Path, timeout: int = 600, env: dict | None = None):
    """Runs ``nb`` top to bottom in ``workdir`` without its install cell (lt8 is this
    interpreter's); the executed cells get their outputs in place. Raises nbclient's
    CellExecutionError on the first failing cell."""
    import os

    import nbclient

    runnable = [c for c in nb.cells if INSTALL_TAG not in c.get("metadata", {}).get("tags", [])]
    sub = type(nb)(nb)
    sub.cells = runnable  # the same cell objects: outputs land in nb's cells too
    env = dict(os.environ if env is None else env)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share one GPU
    env.setdefault("MPLBACKEND", "Agg")
    km = kernel_manager(workdir)
    client = nbclient.NotebookClient(
        sub,
        km=km,
        timeout=timeout,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute(env=env)
    finally:
        if km.has_kernel:  # a kernel manager passed in is ours to shut down, not nbclient's
            km.shutdown_kernel(now=True)
    return nb


def build(name: str):
    import nbformat
    from nbformat.v4 import new_notebook

    nb = new_notebook(cells=NOTEBOOKS[name])
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating changes only what was edited
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> int:
    import nbformat

    run = "--no-execute" not in argv
    args = [a for a in argv if a != "--no-execute"]
    out = Path(args[0]) if args else NOTEBOOK_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        nb = build(name)
        if run:
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp) / "work"
                work.mkdir()
                execute(nb, work)
            for c in nb.cells:  # outputs that name the temporary folder would change every run
                c.get("metadata", {}).pop("execution", None)
        nbformat.validate(nb)
        nbformat.write(nb, out / name)
        print("wrote", out / name, "(executed)" if run else "(no outputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

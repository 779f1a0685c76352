"""Tensor parallelism in JAX on the devices of one host: a Flax Llama-like decoder stack with
logical partition names over a (data, model) mesh under ``jax.jit``, ``nn.Dense`` (fp16) vs
lt8's ``Dense8bit`` (the JAX twin of bench_multi_gpu.py).

    python benchmarks/bench_multi_gpu_jax.py --widths 1,2          # both models, 1 then 2 GPUs
    python benchmarks/bench_multi_gpu_jax.py --models 8b --widths 1,2,4,8 --iters 5
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python benchmarks/bench_multi_gpu_jax.py --tiny --widths 1,2,4   # tiny shapes, CPU

Models (random weights, generated on the devices by the jitted ``init`` with ``out_shardings``;
8 hidden channels whose RMSNorm gains are 20 in every layer, so that activations carry outlier
columns, as bench_e2e.py and bench_multi_gpu.py build them):

- ``8b``: Llama-3-8B shapes (hidden 4096, intermediate 14336, 32 query / 8 KV heads, vocab
  32000), ``--layers-8b`` layers (8);
- ``70b``: Llama-3-70B shapes (hidden 8192, intermediate 28672, 64 query / 8 KV heads, vocab
  32000), ``--layers-70b`` layers (4).

The decoder (``Decoder``: embedding, RMSNorm, GQA attention with rotary embeddings and a
fixed-size KV cache updated with ``dynamic_update_slice``, SwiGLU MLP, output head) takes a
``Linear`` factory for its seven projections per layer; that factory is all that differs between
the variants ``fp16`` (``nn.Dense``, or bf16 with ``--dtype``) and ``lt8`` (``Dense8bit``,
threshold 6, quantizing the very same float kernels: one key, one initializer). The embedding,
the norms and the output head stay float and are shared.

Per width W the mesh is (data=1, model=W) over the first W devices, and the logical rules place
q/k/v/gate/up column-parallel (heads, kv_heads, mlp -> model), o/down row-parallel, the head
column-parallel and the embedding's rows over the vocabulary, the rest replicated (the runs of
NOTES v6 kept the embedding whole); lt8's partitioning rules
(lt8/jax/partitioning.py) then run its kernels on each device's shard. Measured per model,
variant and width (one process sees every local device):

- ``prefill_ms``: one jitted forward of ``--prefill-tokens`` (2048) tokens at batch 1 (the
  logits of every position, as a transformers forward gives), median of ``--iters`` runs;
- ``decode_ms_b1`` / ``decode_ms_b16``: one jitted greedy generation (``--decode-prompt`` (16)
  prompt tokens, then ``--new-tokens`` (32) tokens, the decode steps in a ``lax.scan``),
  milliseconds per new token (the prompt's forward included, as in bench_multi_gpu.py);
- ``weights_gib_per_device``: bytes of every variable shard held by the mesh's first device;
  ``block_weights_gib_per_device``: those of the decoder layers alone;
- ``max_abs_diff_vs_1``: the largest |prefill logit difference| to the same variant on one
  device (all positions and the vocabulary; ``max_abs_logit`` gives the scale), and
  ``tokens_match_vs_1`` the fraction of greedy tokens (both batches) equal to width 1's;
  ``max_abs_diff_vs_fp16``: lt8's logits against the float variant at the same width;
- ``s8_all_gathers``: all-gathers of int8 values in the compiled HLO of the prefill and of the
  generation (lt8 keeps every int8 weight shard where it is: 0 expected).

What to expect (docs/multi_gpu.md): lt8's column-parallel layers are bit-identical to one
device; its row-parallel layers' int8 part is exact and the outlier terms are summed across
devices in float32 (rounding only), which later layers may amplify. The float variant's row
layers sum fp16 partials. Rows go to ``benchmarks/results/bench_multi_gpu_jax-<device kind>.csv``
(``--out`` for another folder); a scaling table is printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Allocate on demand: several widths and variants come and go in one process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lt8.jax import Dense8bit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_shapes import (  # noqa: E402
    LLAMA_SHAPES,
    OUTLIER_CHANNELS,
    OUTLIER_GAIN,
    THRESHOLD,
    TINY_SHAPES,
)

DECODE_BATCHES = (1, 16)
VARIANTS = ("fp16", "lt8")
FIELDS = [
    "model", "variant", "dtype", "devices", "device", "layers", "prefill_tokens", "new_tokens",
    "prefill_ms", "decode_ms_b1", "decode_ms_b16", "weights_gib_per_device",
    "block_weights_gib_per_device", "max_abs_diff_vs_1", "max_abs_logit", "tokens_match_vs_1",
    "max_abs_diff_vs_fp16", "s8_all_gathers", "compile_s",
]  # fmt: skip

# Logical axis -> mesh axis. Column-parallel projections split their output features (heads,
# kv_heads, mlp), row-parallel ones their input features (the same names): Megatron's pairing.
RULES = (
    ("batch", "data"),
    ("seq", None),
    ("embed", None),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("head_dim", None),
)


@dataclasses.dataclass(frozen=True)
class Shape:
    """The shapes of one benchmark model."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    layers: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# --- the model ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Linear:
    """Makes the decoder's projections (no bias), the only layers that differ between variants.

    ``variant`` "lt8" gives a ``Dense8bit`` (inference mode: the float kernel drawn by the same
    initializer from the same key, quantized once), anything else an ``nn.Dense``. ``names`` are
    the kernel's logical (in, out) names; ``Dense8bit`` carries them to ``CB`` as (out, in).
    """

    variant: str
    dtype: Any
    threshold: float = THRESHOLD

    def __call__(self, features: int, names: tuple[str, str], name: str) -> nn.Module:
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
        if self.variant == "lt8":
            return Dense8bit(
                features,
                use_bias=False,
                threshold=self.threshold,
                dtype=self.dtype,
                param_dtype=self.dtype,
                kernel_init=init,
                name=name,
            )
        return nn.Dense(
            features,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.dtype,
            kernel_init=init,
            name=name,
        )


def constrain(x: jax.Array, names: tuple) -> jax.Array:
    """``x`` constrained to the mesh placement of its logical ``names`` (under the rules)."""
    return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
    """Llama's RMSNorm (float32 statistics); ``outliers`` channels get the gain ``gain``."""

    dim: int
    eps: float
    dtype: Any
    outliers: tuple[int, ...] = ()
    gain: float = OUTLIER_GAIN

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def init(key, shape, dtype):
            del key
            g = jnp.ones(shape, dtype)
            return g.at[np.asarray(self.outliers, np.int32)].set(self.gain) if self.outliers else g

        scale = self.param(
            "scale", nn.with_logical_partitioning(init, ("embed",)), (self.dim,), self.dtype
        )
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y.astype(self.dtype) * scale).astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half form) of ``x`` (B, S, ..., head_dim) at ``positions`` (S,)."""
    hd = x.shape[-1]
    inv = theta ** (-jnp.arange(0, hd, 2, dtype=jnp.float32) / hd)
    ang = positions.astype(jnp.float32)[:, None] * inv[None, :]
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 3) + (hd // 2,)
    cos, sin = jnp.cos(ang).reshape(shape), jnp.sin(ang).reshape(shape)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


KV = tuple[jax.Array, jax.Array]
CACHE_NAMES = ("batch", None, "kv_heads", "head_dim")


class Attention(nn.Module):
    """Grouped-query attention over a fixed-size KV cache (B, T, kv_heads, head_dim).

    The new keys and values of positions ``pos .. pos + S - 1`` are written into the cache with
    ``dynamic_update_slice`` (static shapes, so one compiled step serves every position), and each
    query attends to the cache positions up to its own (later slots are masked)."""

    shape: Shape
    linear: Linear

    @nn.compact
    def __call__(self, x: jax.Array, cache: KV, pos: jax.Array) -> tuple[jax.Array, KV]:
        s, B, S = self.shape, x.shape[0], x.shape[1]
        hd, groups = s.head_dim, s.heads // s.kv_heads
        q = self.linear(s.heads * hd, ("embed", "heads"), "q_proj")(x)
        k = self.linear(s.kv_heads * hd, ("embed", "kv_heads"), "k_proj")(x)
        v = self.linear(s.kv_heads * hd, ("embed", "kv_heads"), "v_proj")(x)
        positions = pos + jnp.arange(S, dtype=jnp.int32)
        # Query heads grouped under their KV head: (B, S, kv_heads, groups, head_dim).
        q = rope(q.reshape(B, S, s.kv_heads, groups, hd), positions, s.rope_theta)
        q = constrain(q, ("batch", "seq", "kv_heads", None, "head_dim"))
        k = rope(k.reshape(B, S, s.kv_heads, hd), positions, s.rope_theta)
        v = v.reshape(B, S, s.kv_heads, hd)
        ck, cv = cache
        ck = constrain(
            jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, pos, 0, 0)), CACHE_NAMES
        )
        cv = constrain(
            jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, pos, 0, 0)), CACHE_NAMES
        )
        scores = jnp.einsum("bskgd,btkd->bkgst", q, ck, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(hd)
        visible = jnp.arange(ck.shape[1], dtype=jnp.int32)[None, :] <= positions[:, None]
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bkgst,btkd->bskgd", probs, cv).reshape(B, S, s.heads * hd)
        out = constrain(out, ("batch", "seq", "heads"))
        return self.linear(s.hidden, ("heads", "embed"), "o_proj")(out), (ck, cv)


class MLP(nn.Module):
    """Llama's SwiGLU MLP: gate and up column-parallel, down row-parallel."""

    shape: Shape
    linear: Linear

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.shape
        gate = self.linear(s.intermediate, ("embed", "mlp"), "gate_proj")(x)
        up = self.linear(s.intermediate, ("embed", "mlp"), "up_proj")(x)
        h = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "mlp"))
        return self.linear(s.hidden, ("mlp", "embed"), "down_proj")(h)


class Block(nn.Module):
    """A pre-norm Llama decoder layer."""

    shape: Shape
    linear: Linear
    outliers: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array, cache: KV, pos: jax.Array) -> tuple[jax.Array, KV]:
        s, dtype = self.shape, self.linear.dtype
        h = RMSNorm(s.hidden, s.norm_eps, dtype, self.outliers, name="input_layernorm")(x)
        a, cache = Attention(s, self.linear, name="self_attn")(h, cache, pos)
        x = constrain(x + a, ("batch", "seq", "embed"))
        h = RMSNorm(s.hidden, s.norm_eps, dtype, self.outliers, name="post_attention_layernorm")(x)
        return constrain(x + MLP(s, self.linear, name="mlp")(h), ("batch", "seq", "embed")), cache


class Decoder(nn.Module):
    """A Llama-like causal LM: ``(tokens (B, S), cache, pos) -> (logits (B, S, vocab), cache)``
    where ``cache`` holds one (k, v) pair per layer and ``pos`` is the first token's position."""

    shape: Shape
    linear: Linear
    outliers: tuple[int, ...]

    @nn.compact
    def __call__(
        self, tokens: jax.Array, cache: tuple[KV, ...], pos: jax.Array
    ) -> tuple[jax.Array, tuple[KV, ...]]:
        s, dtype = self.shape, self.linear.dtype
        embed = nn.Embed(
            s.vocab,
            s.hidden,
            dtype=dtype,
            param_dtype=dtype,
            # Unit-scale rows, so that the residual stream starts at the scale of its updates.
            # Rows split over the vocabulary like the head's columns (Megatron's embedding):
            # each device holds 1/W of it; XLA partitions the lookup.
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("vocab", "embed")
            ),
            name="embed_tokens",
        )
        x = constrain(embed(tokens), ("batch", "seq", "embed"))
        new_cache = []
        for i, layer_cache in enumerate(cache):
            x, layer_cache = Block(s, self.linear, self.outliers, name=f"layers_{i}")(
                x, layer_cache, pos
            )
            new_cache.append(layer_cache)
        x = RMSNorm(s.hidden, s.norm_eps, dtype, name="norm")(x)
        head = nn.Dense(
            s.vocab,
            use_bias=False,
            dtype=dtype,
            param_dtype=dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "vocab")
            ),
            name="lm_head",
        )
        return constrain(head(x), ("batch", "seq", "vocab")), tuple(new_cache)


def empty_cache(shape: Shape, batch: int, length: int, dtype: Any) -> tuple[KV, ...]:
    """A zero KV cache of ``length`` positions for every layer."""
    kv = (batch, length, shape.kv_heads, shape.head_dim)
    return tuple((jnp.zeros(kv, dtype), jnp.zeros(kv, dtype)) for _ in range(shape.layers))


def make_functions(model: Decoder, new_tokens: int) -> tuple[Callable, Callable]:
    """``(prefill, generate)``: the jitted-to-be forward of a prompt (all logits), and greedy
    generation of ``new_tokens`` tokens after a prompt (the first from the prompt's forward, the
    others from decode steps in a ``lax.scan``)."""
    s, dtype = model.shape, model.linear.dtype

    def prefill(variables, tokens):
        B, S = tokens.shape
        logits, _ = model.apply(variables, tokens, empty_cache(s, B, S, dtype), 0)
        return logits

    def generate(variables, prompt):
        B, S = prompt.shape
        cache = empty_cache(s, B, S + new_tokens, dtype)
        logits, cache = model.apply(variables, prompt, cache, 0)
        first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

        def step(carry, _):
            tok, cache, pos = carry
            logits, cache = model.apply(variables, tok[:, None], cache, pos)
            nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
            return (nxt, cache, pos + 1), nxt

        carry = (first, cache, jnp.int32(S))
        _, rest = jax.lax.scan(step, carry, None, length=new_tokens - 1)
        return jnp.concatenate([first[:, None], rest.T], axis=1)

    return prefill, generate


# --- measurements -------------------------------------------------------------------------------


def s8_all_gathers(hlo: str) -> list[str]:
    """The all-gather instructions of compiled HLO text that move int8 values (an int8 result or
    operand, also inside async ``all-gather-start`` tuples)."""
    found = []
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.*?)\s+all-gather(?:-start)?\((.*?)\)", line)
        if m and ("s8[" in m.group(1) or "s8[" in m.group(2)):
            found.append(line.strip())
    return found


def device_bytes(tree: Any, device: jax.Device) -> int:
    """Bytes of every shard of ``tree``'s arrays that lives on ``device``."""
    return sum(
        shard.data.nbytes
        for a in jax.tree.leaves(tree)
        for shard in a.addressable_shards
        if shard.device == device
    )


def median_ms(fn: Callable[[], Any], iters: int) -> tuple[float, Any]:
    """Median wall milliseconds of ``fn()`` up to ``block_until_ready`` (after one warm-up
    call), and its last result."""
    out = jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def outlier_columns(model: Decoder, variables: Any, tokens: jax.Array) -> list[int]:
    """The number of outlier columns (some |x| >= threshold) in each RMSNorm's output over
    ``tokens``: what the int8 projections after them see."""
    s = model.shape

    def run(variables, tokens):
        cache = empty_cache(s, tokens.shape[0], tokens.shape[1], model.linear.dtype)
        _, state = model.apply(
            variables,
            tokens,
            cache,
            0,
            capture_intermediates=lambda mdl, _: isinstance(mdl, RMSNorm),
            mutable=["intermediates"],
        )
        outs = [v[0] for v in jax.tree.leaves(state, is_leaf=lambda t: isinstance(t, tuple))]
        return [jnp.sum(jnp.max(jnp.abs(o), axis=(0, 1)) >= model.linear.threshold) for o in outs]

    return [int(c) for c in jax.jit(run)(variables, tokens)]


def bench_one(args, name: str, variant: str, width: int, ref: dict, log) -> dict:
    """One model, variant and width: place the weights, compile, time, compare with ``ref``
    (width 1's results of this model, filled in when ``width`` is 1)."""
    shape = args.shapes[name]
    dtype = jnp.dtype(args.dtype)
    devices = jax.devices()[:width]
    mesh = Mesh(np.array(devices).reshape(1, width), ("data", "model"))
    rng = np.random.default_rng(1)
    outliers = tuple(int(c) for c in np.sort(rng.permutation(shape.hidden)[:OUTLIER_CHANNELS]))
    model = Decoder(shape, Linear(variant, dtype, args.threshold), outliers)
    prefill, generate = make_functions(model, args.new_tokens)
    key = jax.random.key(0)
    tk = jax.random.split(jax.random.key(1), 1 + len(DECODE_BATCHES))
    row: dict[str, Any] = {
        "model": name, "variant": variant if variant == "lt8" else args.dtype_label,
        "dtype": args.dtype, "devices": width, "device": args.device_kind,
        "layers": shape.layers, "prefill_tokens": args.prefill_tokens,
        "new_tokens": args.new_tokens,
    }  # fmt: skip
    t_compile = 0.0
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        replicated = NamedSharding(mesh, P())
        prompt = jax.device_put(
            jax.random.randint(tk[0], (1, args.prefill_tokens), 0, shape.vocab, jnp.int32),
            replicated,
        )
        dprompts = {
            b: jax.device_put(
                jax.random.randint(tk[1 + i], (b, args.decode_prompt), 0, shape.vocab, jnp.int32),
                replicated,
            )
            for i, b in enumerate(DECODE_BATCHES)
        }
        # Weights: the jitted init draws them on the devices, already sharded by the rules.
        tok1, cache1 = jnp.zeros((1, 1), jnp.int32), empty_cache(shape, 1, 1, dtype)

        def init(key):
            return model.init(key, tok1, cache1, 0)

        abstract = jax.eval_shape(init, key)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
        variables = nn.meta.unbox(jax.jit(init, out_shardings=shardings)(key))
        jax.block_until_ready(variables)
        dev0 = devices[0]
        row["weights_gib_per_device"] = device_bytes(variables, dev0) / 2**30
        blocks = [sub[k] for sub in variables.values() for k in sub if k.startswith("layers_")]
        row["block_weights_gib_per_device"] = device_bytes(blocks, dev0) / 2**30
        if variant == "lt8":
            cb = variables["int8"]["layers_0"]["mlp"]["down_proj"]["CB"]
            log(f"  down_proj CB {cb.shape} sharding {cb.sharding.spec}")

        t0 = time.perf_counter()
        prefill_c = jax.jit(prefill).lower(variables, prompt).compile()
        gen_c = {b: jax.jit(generate).lower(variables, p).compile() for b, p in dprompts.items()}
        t_compile = time.perf_counter() - t0
        hlos = [prefill_c.as_text()] + [c.as_text() for c in gen_c.values()]
        gathers = [g for h in hlos for g in s8_all_gathers(h)]
        for g in gathers[:3]:
            log(f"  s8 all-gather: {g[:200]}")
        if variant == "lt8":
            assert any("lt8_int8_linear" in h for h in hlos), "lt8's kernels are not in the HLO"
        row["s8_all_gathers"] = len(gathers)
        row["compile_s"] = t_compile

        row["prefill_ms"], logits = median_ms(lambda: prefill_c(variables, prompt), args.iters)
        logits = np.asarray(jax.device_get(logits), np.float32)
        tokens = {}
        for b, p in dprompts.items():
            ms, toks = median_ms(lambda c=gen_c[b], p=p: c(variables, p), args.iters)
            row[f"decode_ms_b{b}"] = ms / args.new_tokens
            tokens[b] = np.asarray(jax.device_get(toks))
        if width == 1 and variant == VARIANTS[0] and not args.skip_outlier_probe:
            counts = outlier_columns(model, variables, prompt)
            log(f"  outlier columns (|x| >= {args.threshold}) per RMSNorm output: {counts}")

    mine = ref.setdefault(variant, {})
    if width == 1:
        mine.update(logits=logits, tokens=tokens)
    if "logits" in mine:
        row["max_abs_diff_vs_1"] = float(np.max(np.abs(logits - mine["logits"])))
        row["max_abs_logit"] = float(np.max(np.abs(mine["logits"])))
        same = sum(int((tokens[b] == mine["tokens"][b]).sum()) for b in tokens)
        row["tokens_match_vs_1"] = same / sum(t.size for t in tokens.values())
    fp = ref.get("_width", {}).get(width)
    if variant == "lt8" and fp is not None:
        row["max_abs_diff_vs_fp16"] = float(np.max(np.abs(logits - fp)))
    if variant != "lt8":
        ref.setdefault("_width", {})[width] = logits
    return row


# --- output -------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def write_rows(path: Path, rows: list[dict]) -> None:
    """Writes ``rows`` to the CSV at ``path`` (replacing it: one run per file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in FIELDS})


def print_table(rows: list[dict]) -> None:
    """The scaling table: per model and variant, each width's times, its speed-up over one
    device, lt8's speed ratio to the float variant, weights per device and agreement."""

    def g(r, k, spec=".2f"):
        v = r.get(k)
        return "-" if v is None else format(v, spec)

    by = {(r["model"], r["variant"], r["devices"]): r for r in rows}
    hdr = (
        f"{'model':6} {'variant':8} {'dev':>3} {'prefill ms':>10} {'x1':>5} {'dec b1 ms':>9} "
        f"{'x1':>5} {'dec b16 ms':>10} {'x1':>5} {'vs fp':>5} {'GiB/dev':>7} {'blk GiB':>7} "
        f"{'diff vs 1':>9} {'tok=1':>5} {'s8 ag':>5}"
    )
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for (m, v, w), r in sorted(by.items(), key=lambda t: (t[0][0], t[0][1] == "lt8", t[0][2])):
        one = by.get((m, v, 1), {})
        fp = next((x for (mm, vv, ww), x in by.items() if mm == m and ww == w and vv != "lt8"), {})

        def speedup(k, base=one):
            return "-" if base.get(k) is None or r.get(k) is None else f"{base[k] / r[k]:.2f}"

        vs_fp = speedup("decode_ms_b1", fp) if v == "lt8" else "-"
        print(
            f"{m:6} {v:8} {w:>3} {g(r, 'prefill_ms'):>10} {speedup('prefill_ms'):>5} "
            f"{g(r, 'decode_ms_b1'):>9} {speedup('decode_ms_b1'):>5} {g(r, 'decode_ms_b16'):>10} "
            f"{speedup('decode_ms_b16'):>5} {vs_fp:>5} {g(r, 'weights_gib_per_device', '.3f'):>7} "
            f"{g(r, 'block_weights_gib_per_device', '.3f'):>7} "
            f"{g(r, 'max_abs_diff_vs_1', '.3g'):>9} {g(r, 'tokens_match_vs_1'):>5} "
            f"{r.get('s8_all_gathers', '-'):>5}"
        )
    print(
        "x1: speed-up over 1 device; vs fp: lt8's decode b1 speed relative to the float variant "
        "at the same width (>1: lt8 faster); tok=1: greedy tokens equal to 1 device's"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="8b,70b", help="comma list of 8b, 70b")
    p.add_argument("--widths", default=None, help="comma list of device counts (1,2,4,8 as lent)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--layers-8b", type=int, default=None, help="8 (--tiny: 2)")
    p.add_argument("--layers-70b", type=int, default=None, help="4 (--tiny: 2)")
    p.add_argument("--prefill-tokens", type=int, default=None, help="2048 (--tiny: 64)")
    p.add_argument("--decode-prompt", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=None, help="32 (--tiny: 8)")
    p.add_argument("--iters", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--tiny", action="store_true", help="tiny shapes, for the CPU")
    p.add_argument("--skip-outlier-probe", action="store_true")
    p.add_argument("--out", default=None, help="folder for the CSV (default benchmarks/results)")
    args = p.parse_args()

    args.prefill_tokens = args.prefill_tokens or (64 if args.tiny else 2048)
    args.new_tokens = args.new_tokens or (8 if args.tiny else 32)
    if args.new_tokens < 1:
        raise SystemExit("--new-tokens must be at least 1")
    layers = {"8b": args.layers_8b or (2 if args.tiny else 8)}
    layers["70b"] = args.layers_70b or (2 if args.tiny else 4)
    table = TINY_SHAPES if args.tiny else LLAMA_SHAPES
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in table:
            raise SystemExit(f"unknown model {m!r}: choose from {sorted(table)}")
    args.shapes = {m: Shape(**table[m], layers=layers[m]) for m in models}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    n_dev = jax.device_count()
    if args.widths is None:
        widths = [w for w in (1, 2, 4, 8) if w <= n_dev]
    else:
        widths = sorted({int(w) for w in args.widths.split(",")})
    for w in [w for w in widths if w > n_dev]:
        print(f"skipping width {w}: only {n_dev} devices")
    widths = [w for w in widths if w <= n_dev]
    args.device_kind = jax.devices()[0].device_kind.replace(" ", "_")
    args.dtype_label = {"float16": "fp16", "bfloat16": "bf16"}[args.dtype]
    # The float variant runs first at each width: lt8's logits are compared with it.
    variants.sort(key=lambda v: v == "lt8")

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"{n_dev} x {jax.devices()[0].device_kind}, {args.dtype}, widths {widths}")
    rows = []
    for name in models:
        s = args.shapes[name]
        log(f"{name}: {s}")
        ref: dict = {}
        for width in widths:
            if s.kv_heads % width or s.heads % width:
                log(f"  skipping width {width}: it must divide the KV heads ({s.kv_heads})")
                continue
            for variant in variants:
                t0 = time.perf_counter()
                row = bench_one(args, name, variant, width, ref, log)
                rows.append(row)
                gc.collect()  # this width's weights and executables go before the next's
                log(
                    f"  {variant:4} x{width}: prefill {row['prefill_ms']:.2f} ms, decode "
                    f"b1 {row['decode_ms_b1']:.3f} b16 {row['decode_ms_b16']:.3f} ms/token, "
                    f"{row['weights_gib_per_device']:.3f} GiB/device, diff vs 1 "
                    f"{row.get('max_abs_diff_vs_1', float('nan')):.3g}, s8 all-gathers "
                    f"{row['s8_all_gathers']} (compile {row['compile_s']:.1f} s, "
                    f"total {time.perf_counter() - t0:.1f} s)"
                )
    out_dir = Path(args.out or Path(__file__).resolve().parent / "results")
    path = out_dir / f"bench_multi_gpu_jax-{args.device_kind}.csv"
    write_rows(path, rows)
    log(f"wrote {len(rows)} rows to {path}")
    print_table(rows)


if __name__ == "__main__":
    main()

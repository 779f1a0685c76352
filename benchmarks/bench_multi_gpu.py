"""Tensor parallelism on the GPUs of one host: lt8 int8 layers vs fp16, sharded with torch's
stock ``ColwiseParallel`` / ``RowwiseParallel`` (DTensor, NCCL), as docs/multi_gpu.md documents.

    python benchmarks/bench_multi_gpu.py --launch 1,2          # each width in turn, then a table
    torchrun --standalone --nproc-per-node=2 benchmarks/bench_multi_gpu.py   # one width
    python benchmarks/bench_multi_gpu.py                       # one width: 1 GPU, no torchrun
    python benchmarks/bench_multi_gpu.py --table               # the table of the CSV's rows
    python benchmarks/bench_multi_gpu.py --launch 1,2 --tiny   # tiny shapes on the CPU (gloo)

Models (config-built ``LlamaForCausalLM``, random weights as bench_e2e.py builds them: seeded
transformers init, fp16, and 8 hidden channels whose RMSNorm gains are 20 in every layer, so
that activations carry outlier columns):

- ``8b``: Llama-3-8B shapes (hidden 4096, intermediate 14336, 32 query / 8 KV heads, vocab
  32000), ``--layers-8b`` layers (8). About 2.0e9 parameters: 3.7 GiB in fp16.
- ``70b``: Llama-3-70B shapes (hidden 8192, intermediate 28672, 64 query / 8 KV heads, vocab
  32000), ``--layers-70b`` layers (4). About 3.9e9 parameters: 7.4 GiB in fp16.

Variants: ``fp16`` (``nn.Linear``) and ``lt8`` (``lt8.hf.convert_hf_model``, threshold 6; the
output head stays fp16 as lt8's converter leaves it). Every rank builds the same whole model,
then each decoder block is sharded with the plan of docs/multi_gpu.md: q/k/v/gate/up
``ColwiseParallel``, o/down ``RowwiseParallel``. Attention then runs on ``heads / world`` query
and KV heads per rank with no change to the model (transformers' Llama attention reshapes the
projections with ``-1`` heads), so the world size must divide the KV head count (8). The
embedding and the output head are split over the vocabulary as Megatron splits them
(``--replicate-vocab`` keeps them whole, as runs 1-3 of NOTES v6 did); the norms are replicated
(broadcast from rank 0). With one process nothing is sharded: that is the 1-GPU baseline.

``lt8-int8head`` (opt-in) also quantizes the output head (``skip_modules=[]``): the vocabulary-
sized fp16 embedding and head are what keep lt8's weights above half of fp16's (0.57x for these
shapes with a float head).

``fp16-static`` and ``lt8-static`` (opt-in ``--variants``) are the same models run as a deployment
runs them: the prefill through ``torch.compile(model)``, greedy decode with transformers' static
cache (``cache_implementation="static"``, which compiles the decoding forward). Eager DTensor
spends more host time per sharded layer than the GPUs spend on it. After sharding, each rank's
config says its local head counts (``heads / world``), which the static cache is sized by.

Measured per model and variant (rank 0 writes one row): prefill of ``--prefill-tokens`` (2048)
tokens at batch 1 (median of ``--prefill-iters`` timings of one forward after one warm-up),
eager and (GPUs) replayed from a CUDA graph (``prefill_graph_ms``: DTensor's eager dispatch
costs more host time per sharded layer than the layer's GPU time, so only the graph shows what
the GPUs do);
greedy decode of ``--new-tokens`` (32) tokens after a ``--decode-prompt`` (16) token prompt at
batch 1 and 16, ms per new token (``generate`` time / new tokens, so the prompt's forward is
included, as in bench_e2e.py; median of ``--decode-iters`` runs after a short warm-up); the
weights each GPU holds (bytes of the distinct storages of its parameters, buffers and int8
scales: ``weights_gib_per_gpu``; those inside the decoder blocks alone:
``block_weights_gib_per_gpu``).

Agreement with one GPU: before sharding, rank 0 runs the very same (whole) model on its GPU:
the prefill logits and the greedy tokens of both decode batches. After sharding it compares:
``max_abs_diff_vs_1gpu`` is the largest |logit difference| over all prefill positions and the
vocabulary, ``max_abs_logit`` the largest |logit| of that 1-GPU reference (for scale), and
``tokens_match_vs_1gpu`` the fraction of greedy tokens (batch 1 and 16) equal to the 1-GPU
ones. This costs no extra weight memory (every rank holds the whole model before sharding
anyway) and needs no state across runs; with 1 GPU it checks that a run repeats itself. What
to expect (docs/multi_gpu.md): lt8's column layers are bit-identical and its row layers' int8
part is exact, with float32 rounding of the ranks' partial sums (rarely one fp16 ulp per row
layer output), which later layers may amplify; fp16's row layers sum fp16 partials, so fp16's
differences are of fp16 rounding.

Rank 0 appends rows to ``benchmarks/results/bench_multi_gpu-<device>.csv`` (``--out`` for
another folder); each run is tagged with ``run`` (the ``--launch`` driver's start time, shared
by its widths), and the table reads the newest row per (model, variant, gpus) of that run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import time_cuda  # noqa: E402
from model_shapes import (  # noqa: E402
    LLAMA_SHAPES,
    OUTLIER_CHANNELS,
    OUTLIER_GAIN,
    THRESHOLD,
    TINY_SHAPES,
)

FIELDS = [
    "run", "model", "variant", "gpus", "device", "layers", "prefill_tokens", "new_tokens",
    "prefill_ms", "prefill_graph_ms", "decode_ms_b1", "decode_ms_b16", "weights_gib_per_gpu",
    "block_weights_gib_per_gpu", "max_abs_diff_vs_1gpu", "max_abs_logit", "tokens_match_vs_1gpu",
]  # fmt: skip
TP_PLAN_NAMES = {
    "self_attn.q_proj": "column", "self_attn.k_proj": "column", "self_attn.v_proj": "column",
    "self_attn.o_proj": "row", "mlp.gate_proj": "column", "mlp.up_proj": "column",
    "mlp.down_proj": "row",
}  # fmt: skip
DECODE_BATCHES = (1, 16)


@dataclass(frozen=True)
class Shape:
    """The Llama shapes a benchmark model is built with."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int


SHAPES = {name: Shape(**dims) for name, dims in LLAMA_SHAPES.items()}
TINY = {name: Shape(**dims) for name, dims in TINY_SHAPES.items()}  # --tiny (CPU, gloo)


# --- the model ----------------------------------------------------------------------------------


def build_llama(shape: Shape, layers: int, device: torch.device, dtype: torch.dtype):
    """A config-built ``LlamaForCausalLM`` of ``shape`` with ``layers`` decoder layers, random
    seeded weights in ``dtype`` on ``device`` and the outlier channels of bench_e2e.py (the same
    weights as bench_e2e's ``build_fp16_model`` for the 8B shapes on a GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        num_hidden_layers=layers, vocab_size=shape.vocab, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    g = torch.Generator().manual_seed(1)
    chans = torch.randperm(cfg.hidden_size, generator=g)[:OUTLIER_CHANNELS].to(device)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[chans] = OUTLIER_GAIN
            layer.post_attention_layernorm.weight[chans] = OUTLIER_GAIN
    return model.eval()


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def weights_gib_per_device(module: torch.nn.Module, device: torch.device) -> float:
    """GiB of the distinct storages on ``device`` behind ``module``'s parameters, buffers and
    int8 scales (``SCB`` beside an int8 weight), local shards for DTensors. Storages, not
    tensor sizes: a row-parallel lt8 weight is a view into a buffer 16 columns wider, and a
    shard that kept a whole tensor alive would show here."""
    seen, total = set(), 0
    tensors = list(module.parameters()) + list(module.buffers())
    tensors += [
        p.SCB for p in module.parameters() if isinstance(getattr(p, "SCB", None), torch.Tensor)
    ]
    for t in tensors:
        local = _local(t)
        if local.device != device:
            continue
        storage = local.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total / 2**30


BASE_VARIANTS = ("fp16", "lt8", "lt8-int8head")
VARIANTS = BASE_VARIANTS + tuple(f"{v}-static" for v in BASE_VARIANTS)


def make_variant(variant: str, model, threshold: float):
    """The model of ``variant``: ``fp16`` as built; ``lt8`` converted in place with the output
    head kept in fp16 (bitsandbytes' and lt8's default); ``lt8-int8head`` with the head in int8
    too (``skip_modules=[]``); a ``-static`` variant is the same model, run compiled."""
    variant = variant.removesuffix("-static")
    if variant == "fp16":
        return model
    if variant in ("lt8", "lt8-int8head"):
        import lt8.hf

        skip = [] if variant == "lt8-int8head" else None
        return lt8.hf.convert_hf_model(model, threshold=threshold, skip_modules=skip).eval()
    raise ValueError(f"unknown variant {variant!r}")


def shard_blocks(model, mesh, vocab: bool) -> None:
    """Shards every decoder block with torch's stock styles (the plan of docs/multi_gpu.md)
    and, with ``vocab``, the embedding and the output head over the vocabulary as Megatron does
    (embedding rows ``RowwiseParallel``, its partial sums all-reduced; head columns
    ``ColwiseParallel``, the logits all-gathered), then broadcasts the replicated tensors
    (norms, rotary buffers; embedding and head without ``vocab``) from rank 0, so that every
    rank runs rank 0's weights whatever its own random init gave."""
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    styles = {"column": ColwiseParallel, "row": RowwiseParallel}
    for block in model.model.layers:
        parallelize_module(block, mesh, {n: styles[s]() for n, s in TP_PLAN_NAMES.items()})
    if vocab:
        plan = {
            "model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
            "lm_head": ColwiseParallel(output_layouts=Replicate()),
        }
        parallelize_module(model, mesh, plan)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if not isinstance(t, DTensor):
                dist.broadcast(t.data, src=0)


# --- timing -------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Median milliseconds of ``fn`` after one warm-up call: CUDA events on a GPU (bench_e2e's
    ``time_cuda``), wall clock on the CPU."""
    if device.type == "cuda":
        return time_cuda(fn, iters)
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_ms(fn: Callable[[], object], iters: int) -> float:
    """Median milliseconds of one replay of ``fn`` captured in a CUDA graph (NCCL collectives
    included): the forward without the host's per-op cost, which for DTensor's eager dispatch
    (~0.35 ms a sharded linear, measured on an H200 host) exceeds the GPU time of a prefill.
    Every rank captures and replays together."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if dist.is_initialized():
        dist.barrier()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    if dist.is_initialized():
        dist.barrier()
    ms = time_cuda(graph.replay, iters)
    del graph
    return ms


def greedy(model, ids: torch.Tensor, new_tokens: int, static: bool = False) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens after ``ids`` (the new tokens only); with
    ``static``, transformers' static cache (a compiled decoding forward)."""
    kw = {"cache_implementation": "static"} if static else {}
    out = model.generate(
        ids,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        **kw,
    )
    return out[:, ids.shape[1] :]


def decode_ms(model, ids, new_tokens: int, iters: int, device: torch.device, static: bool):
    """Milliseconds per new token of greedy ``generate`` (median of ``iters`` runs after a
    warm-up of a few tokens, which meets every kernel shape of the decode; the whole length
    with ``static``, whose cache size is part of the compiled graph), and the tokens of the
    last run."""
    greedy(model, ids, new_tokens if static else min(new_tokens, 4), static)
    times = []
    for _ in range(max(iters, 1)):
        if dist.is_initialized():
            dist.barrier()  # the ranks start together: the time is the slowest rank's
        _sync(device)
        t0 = time.perf_counter()
        tokens = greedy(model, ids, new_tokens, static)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3 / new_tokens)
    return statistics.median(times), tokens


# --- one width ----------------------------------------------------------------------------------


class Log:
    """Progress lines with the seconds since start, printed by rank 0."""

    def __init__(self, rank: int):
        self.rank, self.t0 = rank, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)


def reference(model, prompt, decode_ids, new_tokens: int) -> dict:
    """The whole (unsharded) model's prefill logits and greedy tokens."""
    with torch.no_grad():
        logits = model(prompt).logits
        tokens = {b: greedy(model, ids, new_tokens) for b, ids in decode_ids.items()}
    return {"logits": logits, "tokens": tokens}


def bench_one(args, name: str, variant: str, ctx: dict, log: Log) -> dict | None:
    """Builds, shards and measures one model variant; returns rank 0's CSV row."""
    rank, world, device, mesh = ctx["rank"], ctx["world"], ctx["device"], ctx["mesh"]
    shapes = TINY if args.tiny else SHAPES
    shape, layers = shapes[name], args.layers_8b if name == "8b" else args.layers_70b
    label = f"{'tiny-' if args.tiny else ''}{name}"
    if shape.kv_heads % world:
        log(f"{label} {variant}: skipped, {world} ranks do not divide {shape.kv_heads} KV heads")
        return None

    g = torch.Generator().manual_seed(2)
    # Token 0 is the pad token of generate: prompts avoid it, so no position counts as padding.
    prompt = torch.randint(1, shape.vocab, (1, args.prefill_tokens), generator=g).to(device)
    decode_ids = {
        b: torch.randint(1, shape.vocab, (b, args.decode_prompt), generator=g).to(device)
        for b in DECODE_BATCHES
    }

    log(f"{label} {variant}: building ({layers} layers)")
    model = make_variant(variant, build_llama(shape, layers, device, ctx["dtype"]), args.threshold)
    ref = None
    if rank == 0:
        log(f"{label} {variant}: 1-GPU reference on rank 0")
        ref = reference(model, prompt, decode_ids, args.new_tokens)
    if world > 1:
        dist.barrier()
        shard_blocks(model, mesh, vocab=not args.replicate_vocab)
        # Each rank's attention now has heads / world heads: what a static cache is sized by.
        model.config.num_attention_heads = shape.heads // world
        model.config.num_key_value_heads = shape.kv_heads // world
        log(f"{label} {variant}: sharded over {world} ranks")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        log(f"{label} {variant}: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB allocated")

    row = {
        "run": args.run_id, "model": label, "variant": variant, "gpus": world,
        "device": ctx["device_name"], "layers": layers, "prefill_tokens": args.prefill_tokens,
        "new_tokens": args.new_tokens,
        "weights_gib_per_gpu": weights_gib_per_device(model, device),
        "block_weights_gib_per_gpu": weights_gib_per_device(model.model.layers, device),
    }  # fmt: skip
    static = variant.endswith("-static")
    forward = torch.compile(model) if static else model
    with torch.no_grad():
        logits = forward(prompt).logits
        if dist.is_initialized():
            dist.barrier()
        row["prefill_ms"] = time_ms(lambda: forward(prompt), args.prefill_iters, device)
        log(f"{label} {variant}: prefill {row['prefill_ms']:.2f} ms")
        if device.type == "cuda":
            row["prefill_graph_ms"] = graph_ms(
                lambda: forward(prompt, use_cache=False), args.prefill_iters
            )
            log(f"{label} {variant}: prefill under a CUDA graph {row['prefill_graph_ms']:.2f} ms")
        tokens = {}
        for b, ids in decode_ids.items():
            row[f"decode_ms_b{b}"], tokens[b] = decode_ms(
                model, ids, args.new_tokens, args.decode_iters, device, static
            )
            log(f"{label} {variant}: decode b{b} {row[f'decode_ms_b{b}']:.2f} ms/token")
    if rank != 0:
        return None
    ref_logits = ref["logits"].float()
    row["max_abs_diff_vs_1gpu"] = float((logits.float() - ref_logits).abs().max())
    row["max_abs_logit"] = float(ref_logits.abs().max())
    same = sum(int((tokens[b] == ref["tokens"][b]).sum()) for b in DECODE_BATCHES)
    row["tokens_match_vs_1gpu"] = same / sum(t.numel() for t in tokens.values())
    log(
        f"{label} {variant}: vs 1 GPU max|dlogit| {row['max_abs_diff_vs_1gpu']:.4g} "
        f"(max|logit| {row['max_abs_logit']:.4g}), tokens equal {row['tokens_match_vs_1gpu']:.3f}"
    )
    return row


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def append_rows(path: Path, rows: list[dict]) -> None:
    """Appends ``rows`` to the CSV at ``path`` (a header first when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})


def run_width(args) -> None:
    """One width: every rank of torchrun (or one process without it) runs every model."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.tiny:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    mesh = None
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        mesh = init_device_mesh(device.type, (world,))
    import lt8.torch  # noqa: F401  (installs the hook that lets torch's styles shard int8 layers)

    device_name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    ctx = {
        "rank": rank, "world": world, "device": device, "mesh": mesh,
        "device_name": device_name.replace(" ", "_"),
        "dtype": getattr(torch, args.dtype),
    }  # fmt: skip
    log = Log(rank)
    log(f"{world} rank(s) on {device_name}, {args.dtype}, run {args.run_id}")
    rows = []
    for name in args.models:
        for variant in args.variants:
            row = bench_one(args, name, variant, ctx, log)
            if row is not None:
                rows.append(row)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if rank == 0 and rows:
        path = csv_path(args, ctx["device_name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        append_rows(path, rows)
        log(f"appended {len(rows)} rows to {path}")
    if dist.is_initialized():
        dist.destroy_process_group()


# --- the driver and the table -------------------------------------------------------------------


def csv_path(args, device_name: str) -> Path:
    out_dir = Path(args.out or Path(__file__).resolve().parent / "results")
    return out_dir / f"bench_multi_gpu-{device_name}.csv"


def _ratio(a, b) -> str:
    try:
        return f"{float(a) / float(b):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def _fp16_partner(variant: str) -> str:
    """The fp16 variant an lt8 variant is compared with (run the same way)."""
    return "fp16-static" if variant.endswith("-static") else "fp16"


def print_table(path: Path, run_id: str | None) -> None:
    """The scaling table of the CSV's rows of ``run_id`` (every run when None; the newest row
    per model, variant and width wins)."""
    if not path.exists():
        print(f"no results at {path}")
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if run_id is None or r["run"] == run_id]
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(r["model"], r["variant"], int(r["gpus"]))] = r
    if not latest:
        print(f"no rows of run {run_id} in {path}")
        return
    print(f"\n{path}" + (f" (run {run_id})" if run_id else ""))
    print(
        "speedup = 1-GPU time / this time (same variant); lt8/fp16 = lt8's value / fp16's "
        "(same width); weights = GiB per GPU (whole model | decoder blocks)"
    )
    head = (
        f"{'model':<9} {'variant':<11} {'gpus':>4} {'prefill ms':>10} {'speedup':>7} "
        f"{'b1 ms/tok':>9} {'speedup':>7} {'b16 ms/tok':>10} {'speedup':>7} "
        f"{'weights':>7} {'blocks':>7} {'max|dlogit|':>11} {'tokens=':>7}"
    )
    print(head)
    print("-" * len(head))
    for (model, variant, gpus), r in sorted(latest.items()):
        one = latest.get((model, variant, 1), {})
        print(
            f"{model:<9} {variant:<11} {gpus:>4} {r['prefill_ms']:>10} "
            f"{_ratio(one.get('prefill_ms'), r['prefill_ms']):>7} {r['decode_ms_b1']:>9} "
            f"{_ratio(one.get('decode_ms_b1'), r['decode_ms_b1']):>7} {r['decode_ms_b16']:>10} "
            f"{_ratio(one.get('decode_ms_b16'), r['decode_ms_b16']):>7} "
            f"{r['weights_gib_per_gpu']:>7} {r['block_weights_gib_per_gpu']:>7} "
            f"{r['max_abs_diff_vs_1gpu']:>11} {r['tokens_match_vs_1gpu']:>7}"
        )
    print("\nlt8 / fp16 at each width (time: < 1 means lt8 is faster)")
    head = (
        f"{'model':<9} {'variant':<10} {'gpus':>4} {'prefill':>7} {'b1':>5} {'b16':>5} "
        f"{'weights/GPU':>11} {'blocks/GPU':>10}"
    )
    print(head)
    print("-" * len(head))
    for (model, variant, gpus), r in sorted(latest.items()):
        f16 = latest.get((model, _fp16_partner(variant), gpus))
        if not variant.startswith("lt8") or f16 is None:
            continue
        print(
            f"{model:<9} {variant:<10} {gpus:>4} {_ratio(r['prefill_ms'], f16['prefill_ms']):>7} "
            f"{_ratio(r['decode_ms_b1'], f16['decode_ms_b1']):>5} "
            f"{_ratio(r['decode_ms_b16'], f16['decode_ms_b16']):>5} "
            f"{_ratio(r['weights_gib_per_gpu'], f16['weights_gib_per_gpu']):>11} "
            f"{_ratio(r['block_weights_gib_per_gpu'], f16['block_weights_gib_per_gpu']):>10}"
        )
    print("\nthe issue's targets, as measured (reported, not judged):")
    for (model, variant, gpus), r in sorted(latest.items()):
        one = latest.get((model, variant, 1))
        if model.endswith("8b") and not model.endswith("70b") and gpus == 2 and one:
            print(
                f"  {model} {variant}: prefill speedup on 2 GPUs = "
                f"{_ratio(one['prefill_ms'], r['prefill_ms'])} eager, "
                f"{_ratio(one.get('prefill_graph_ms'), r.get('prefill_graph_ms'))} under CUDA "
                f"graphs (target >= 1.7)"
            )
    for (model, variant, gpus), r in sorted(latest.items()):
        f16 = latest.get((model, _fp16_partner(variant), gpus))
        if variant.startswith("lt8") and f16:
            print(
                f"  {model} {variant} {gpus} GPU(s): weights per GPU / fp16 = "
                f"{_ratio(r['weights_gib_per_gpu'], f16['weights_gib_per_gpu'])} "
                f"(blocks {_ratio(r['block_weights_gib_per_gpu'], f16['block_weights_gib_per_gpu'])}"
                f"; target <= 0.55), time prefill/prefill graph/b1/b16 = "
                f"{_ratio(r['prefill_ms'], f16['prefill_ms'])}/"
                f"{_ratio(r.get('prefill_graph_ms'), f16.get('prefill_graph_ms'))}/"
                f"{_ratio(r['decode_ms_b1'], f16['decode_ms_b1'])}/"
                f"{_ratio(r['decode_ms_b16'], f16['decode_ms_b16'])} (target < 1)"
            )


def _without_launch(argv: list[str]) -> list[str]:
    """``argv`` minus the driver's own options (``--launch``, ``--run-id``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--launch", "--run-id"):
            skip = True
        elif not a.startswith(("--launch=", "--run-id=")):
            out.append(a)
    return out


def launch(args) -> None:
    """Runs each width in turn (1 without torchrun, more under ``torchrun --standalone``),
    then prints the table of this run."""
    here = str(Path(__file__).resolve())
    forwarded = _without_launch(sys.argv[1:]) + ["--run-id", args.run_id]
    if args.tiny:
        available = None
        device_name = "cpu"
    else:
        available = torch.cuda.device_count()
        if not available:
            raise SystemExit("no CUDA device: run with --tiny for the CPU")
        device_name = torch.cuda.get_device_name(0).replace(" ", "_")
    for n in args.launch:
        if available is not None and n > available:
            print(f"--- {n} GPUs: skipped, {available} available", flush=True)
            continue
        if n == 1:
            cmd = [sys.executable, here, *forwarded]
        else:
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={n}", here, *forwarded,
            ]  # fmt: skip
        print(f"--- {n} GPU(s): {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        print(f"--- {n} GPU(s): exit {rc} after {time.perf_counter() - t0:.1f} s", flush=True)
    print_table(csv_path(args, device_name), args.run_id)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv_list = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument(
        "--launch",
        type=lambda s: [int(x) for x in csv_list(s)],
        default=None,
        help="widths to run in turn, e.g. 1,2,4,8, then print the table",
    )
    p.add_argument("--table", action="store_true", help="print the table of the CSV and exit")
    p.add_argument("--models", type=csv_list, default=["8b", "70b"])
    p.add_argument("--variants", type=csv_list, default=["fp16", "lt8"])
    p.add_argument("--layers-8b", type=int, default=8)
    p.add_argument("--layers-70b", type=int, default=4)
    p.add_argument("--prefill-tokens", type=int, default=None, help="2048 (--tiny: 64)")
    p.add_argument("--decode-prompt", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=None, help="32 (--tiny: 8)")
    p.add_argument("--prefill-iters", type=int, default=3)
    p.add_argument("--decode-iters", type=int, default=1)
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU over gloo")
    p.add_argument(
        "--replicate-vocab",
        action="store_true",
        help="keep the embedding and the output head whole on every rank (runs 1-3 of v6)",
    )
    p.add_argument("--out", default=None, help="folder for the CSV (default benchmarks/results)")
    p.add_argument("--run-id", default=None, help="tag of the rows (default: the start time)")
    args = p.parse_args()
    bad = [m for m in args.models if m not in SHAPES] + [
        v for v in args.variants if v not in VARIANTS
    ]
    if bad:
        p.error(f"unknown model or variant: {bad}")
    if args.prefill_tokens is None:
        args.prefill_tokens = 64 if args.tiny else 2048
    if args.new_tokens is None:
        args.new_tokens = 8 if args.tiny else 32
    if args.run_id is None:
        args.run_id = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    if args.table:
        name = "cpu" if args.tiny else torch.cuda.get_device_name(0).replace(" ", "_")
        print_table(csv_path(args, name), None)
    elif args.launch:
        launch(args)
    else:
        run_width(args)


if __name__ == "__main__":
    main()

"""JAX decode against torch's CUDA graph and XLA's fp16 dense (issue 16's decode target).

    python benchmarks/bench_jax_decode.py                      # 8192x8192, M = 1, 16 layers
    python benchmarks/bench_jax_decode.py --shapes 4096x14336 --ms 1,16

Every variant runs the same work: --layers independent layers, each with its own weight (so no
weight stays in L2 and XLA cannot merge dots over a shared operand) and its own input, in ONE
dispatch: torch replays one CUDA graph of all layers (fp16 ``nn.Linear`` and lt8
``Linear8bitLt``); JAX runs one ``jax.jit`` of all layers (``lt8.jax.linear`` and
``x @ w + b`` in fp16). All torch variants run first, then all JAX ones (a torch graph captured
after JAX started failed to capture cuBLAS's fp16 GEMM on the H200 machine).

Per layer, three times:

* ``span``: the GPU time of one call, from its first kernel's start to its last kernel's end
  (torch.profiler, which also sees XLA's kernels: CUPTI is per process), median of 5 calls.
  Host dispatch before the first kernel is excluded, gaps between kernels are included: the
  figure to compare across frameworks;
* ``wall``: torch, CUDA events around a replay; JAX, host time around one blocked call (its
  dispatch and the wait for 16 outputs included);
* ``kernels``: the sum of kernel times of one call, and the top kernels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linear import capture_graph, realistic_inputs  # noqa: E402
from bench_models import lt8_layer  # noqa: E402

THRESHOLD = 6.0


def profile_call(fn, n_layers: int, calls: int = 5) -> tuple[float, float, list[tuple[str, float]]]:
    """(span us per layer, kernel-sum us per layer, [(kernel, us per layer)]) of fn, each call
    profiled on its own; span and sum are medians over the calls, the list is the last call's."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    spans, sums, rows = [], [], []
    for _ in range(calls):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        kern = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        if not kern:
            continue
        start = min(e.time_range.start for e in kern)
        end = max(e.time_range.end for e in kern)
        spans.append((end - start) / n_layers)
        sums.append(sum(e.time_range.elapsed_us() for e in kern) / n_layers)
        per: dict[str, float] = {}
        for e in kern:
            per[e.name] = per.get(e.name, 0.0) + e.time_range.elapsed_us() / n_layers
        rows = sorted(per.items(), key=lambda r: -r[1])
    if not spans:
        return float("nan"), float("nan"), []
    return statistics.median(spans), statistics.median(sums), rows


def torch_graph(layers: list, xs: list) -> torch.cuda.CUDAGraph:
    """One CUDA graph that runs every layer on its own input."""

    def run():
        with torch.no_grad():
            for layer, x in zip(layers, xs):
                layer(x)

    return capture_graph(run)


def event_time(g: torch.cuda.CUDAGraph, n_layers: int, iters: int) -> float:
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / n_layers)
    return statistics.median(times)


def blocked_time(f, args, n_layers: int, iters: int) -> float:
    import jax

    jax.block_until_ready(f(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t0) * 1e6 / n_layers)
    return statistics.median(times)


def fmt(name: str, wall: float, span: float, ksum: float, rows) -> str:
    top = " | ".join(f"{t:.1f} {k[:60]}" for k, t in rows[:4])
    return f"  [{name}] span {span:.1f} wall {wall:.1f} kernels {ksum:.1f} us per layer: {top}"


def torch_part(K: int, N: int, M: int, n_layers: int, iters: int) -> tuple[dict, list]:
    fps = [torch.nn.Linear(K, N, device="cuda", dtype=torch.float16) for _ in range(n_layers)]
    q = [lt8_layer(fp) for fp in fps]
    xs = realistic_inputs(M, K, n_layers)
    res = {}
    for name, layers in (("torch graph fp16", fps), ("torch graph lt8", q)):
        g = torch_graph(layers, xs)
        wall = event_time(g, n_layers, iters)
        span, ksum, rows = profile_call(g.replay, n_layers)
        res[name] = (wall, span, ksum, rows)
        del g
    xs_np = [x.cpu().numpy() for x in xs]
    return res, xs_np


def jax_part(K: int, N: int, M: int, n_layers: int, iters: int, xs_np: list) -> dict:
    import jax
    import jax.numpy as jnp

    from lt8.jax import ops as jops

    keys = jax.random.split(jax.random.PRNGKey(0), n_layers)
    quant, w16 = [], []
    for k in keys:
        w = jax.random.normal(k, (N, K), jnp.float32) * (1.0 / K**0.5)
        b = jnp.zeros((N,), jnp.float16)
        quant.append((*jops.quantize_weight(w), b))
        w16.append((w.T.astype(jnp.float16), b))
        del w
    jxs = jnp.stack([jnp.asarray(x) for x in xs_np])

    def lt8_net(xs, ws):
        return [
            jops.linear(xs[i], cb, scb, b, threshold=THRESHOLD) for i, (cb, scb, b) in enumerate(ws)
        ]

    def fp16_net(xs, ws):
        return [xs[i] @ w + b for i, (w, b) in enumerate(ws)]

    res = {}
    for name, f, ws in (
        ("jax jit lt8", jax.jit(lt8_net), quant),
        ("xla jit fp16", jax.jit(fp16_net), w16),
    ):
        wall = blocked_time(f, (jxs, ws), n_layers, iters)
        span, ksum, rows = profile_call(lambda: jax.block_until_ready(f(jxs, ws)), n_layers)  # noqa: B023
        res[name] = (wall, span, ksum, rows)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="8192x8192", help="comma-separated INxOUT")
    p.add_argument("--ms", default="1", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args()
    cases = [
        (int(s.split("x")[0]), int(s.split("x")[1]), M)
        for s in args.shapes.split(",")
        for M in args.ms
    ]
    print(f"device: {torch.cuda.get_device_name()}, layers per call {args.layers}", flush=True)
    torch_res, inputs = {}, {}
    for K, N, M in cases:
        torch_res[(K, N, M)], inputs[(K, N, M)] = torch_part(K, N, M, args.layers, args.iters)
        torch.cuda.empty_cache()
    for K, N, M in cases:
        res = {
            **torch_res[(K, N, M)],
            **jax_part(K, N, M, args.layers, args.iters, inputs[(K, N, M)]),
        }
        jl, tl, xf = res["jax jit lt8"][1], res["torch graph lt8"][1], res["xla jit fp16"][1]
        print(
            f"{K}->{N} M={M} (GPU span, us per layer): jax lt8 {jl:.1f}, torch graph lt8 {tl:.1f},"
            f" xla fp16 {xf:.1f} | jax lt8 / torch lt8 graph {jl / tl:.2f} (target <= 1.1),"
            f" jax lt8 / xla fp16 {jl / xf:.2f} (target <= 0.7)",
            flush=True,
        )
        for name, (wall, span, ksum, rows) in res.items():
            print(fmt(name, wall, span, ksum, rows), flush=True)


if __name__ == "__main__":
    main()

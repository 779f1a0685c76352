"""CPU benchmark of the int8 layers against float32 (issue 15).

    python benchmarks/bench_cpu.py                       # full grid
    python benchmarks/bench_cpu.py --shapes 4096x4096 --ms 256 --dtypes f32

For each layer shape (in x out) and batch M: torch float32 ``nn.Linear`` (the baseline of every
ratio), lt8 ``Linear8bitLt(threshold=6)`` on float32 / float16 / bfloat16 inputs, lt8's int8 GEMM
alone (``torch.ops.lt8.int8_gemm``) next to ``torch._int_mm`` (oneDNN, the int8 anchor),
bitsandbytes' CPU ``Linear8bitLt`` when installed, and JAX: lt8 ``Dense8bit`` under ``jax.jit``
against ``flax.linen.Dense`` in float32 under ``jax.jit``. Inputs are N(0, 1) with ~0.2% of the
columns carrying outliers above the threshold. Times are wall-clock medians (and minima) of
several calls after a warm-up; ratios (``*_ratio``) are medians of per-pair ratios of calls made
alternately with the float32 baseline, steadier on a shared machine. Every row records the
1-minute load average (``uptime``) before and after it. Writes
benchmarks/results/bench_cpu-<cpu model>.csv and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lt8 import _native

SHAPES = [(4096, 4096), (4096, 11008), (1024, 4096)]  # (in, out)
MS = [1, 16, 128, 256, 512]
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
THRESHOLD = 6.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def load_avg() -> float:
    return os.getloadavg()[0]


def wall_time(fn, min_reps: int = 3, budget_s: float = 1.5) -> tuple[float, float]:
    """(median, min) seconds per call: one warm-up, then at least min_reps calls and more while
    the budget lasts; a warm-up slower than twice the budget is the only call timed."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > 2 * budget_s:  # very slow (torch._int_mm without VNNI): the one call it is
        return first, first
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def paired(base, fn, min_pairs: int = 3, budget_s: float = 3.0) -> tuple[float, float, float]:
    """(median base s, median fn s, median of per-pair ratios fn/base), calling the two
    alternately after a warm-up of each: on a shared machine both calls of a pair see about the
    same load, so the ratio is steadier than a ratio of separately taken medians."""
    base()
    fn()
    tb, tf, ratios = [], [], []
    start = time.perf_counter()
    while len(ratios) < min_pairs or (time.perf_counter() - start < budget_s and len(ratios) < 50):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tb.append(t1 - t0)
        tf.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(tb), statistics.median(tf), statistics.median(ratios)


def inputs(M: int, K: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    cols = torch.randperm(K, generator=g)[: max(1, round(0.002 * K))]
    x[:, cols] = x[:, cols] * 4 + torch.sign(x[:, cols]) * 7  # |x| > 6 in those columns
    return x.to(dtype)


def torch_rows(K: int, N: int, M: int, dtypes: list[str], bnb) -> dict[str, float]:
    import lt8

    fp = torch.nn.Linear(K, N)
    q = lt8.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=THRESHOLD)
    q.weight = lt8.nn.Int8Params(fp.weight.data.clone(), requires_grad=False)
    q.bias = torch.nn.Parameter(fp.bias.data.clone())
    q = q.to("cpu")
    row: dict[str, float] = {}
    with torch.no_grad():
        x32 = inputs(M, K, torch.float32)
        row["f32_linear_ms"], row["f32_linear_min_ms"] = (
            1e3 * t for t in wall_time(lambda: fp(x32))
        )
        for name in dtypes:
            x = inputs(M, K, DTYPES[name])
            med, lo = wall_time(lambda x=x: q(x))
            row[f"lt8_{name}_ms"], row[f"lt8_{name}_min_ms"] = 1e3 * med, 1e3 * lo
            row[f"lt8_{name}_ratio"] = paired(lambda: fp(x32), lambda x=x: q(x))[2]
        if bnb is not None:
            try:
                b = bnb.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=THRESHOLD)
                b.weight = bnb.nn.Int8Params(
                    fp.weight.data.clone(), requires_grad=False, has_fp16_weights=False
                )
                b.bias = torch.nn.Parameter(fp.bias.data.clone())
                row["bnb_f32_ms"] = 1e3 * wall_time(lambda: b(x32))[0]
            except Exception as err:  # noqa: BLE001 - report, keep the other numbers
                print(f"bitsandbytes failed for {K}x{N} M={M}: {type(err).__name__}: {err}")
        A = torch.randint(-127, 128, (M, K), dtype=torch.int8)
        B = q.weight.data if q.weight.dtype == torch.int8 else torch.randint(-127, 128, (N, K))
        B = B.to(torch.int8).contiguous()
        row["lt8_int8_gemm_ms"] = 1e3 * wall_time(lambda: torch.ops.lt8.int8_gemm(A, B))[0]
        try:
            Bt = B.t()
            row["int_mm_ms"] = 1e3 * wall_time(lambda: torch._int_mm(A, Bt), budget_s=1.0)[0]
            row["gemm_vs_int_mm"] = row["lt8_int8_gemm_ms"] / row["int_mm_ms"]
        except Exception as err:  # noqa: BLE001 - _int_mm refuses some shapes (e.g. small M)
            print(f"torch._int_mm failed for M={M} K={K} N={N}: {type(err).__name__}: {err}")
    return row


def jax_rows(K: int, N: int, M: int, dtypes: list[str]) -> dict[str, float]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from lt8.jax import Dense8bit

    dense = nn.Dense(N)
    x32 = jnp.asarray(inputs(M, K, torch.float32).numpy())
    params = dense.init(jax.random.key(0), x32)["params"]
    f32 = jax.jit(lambda p, x: dense.apply({"params": p}, x))
    row: dict[str, float] = {}
    row["jax_f32_dense_ms"] = 1e3 * wall_time(lambda: f32(params, x32).block_until_ready())[0]
    layer = Dense8bit(N, threshold=THRESHOLD)
    variables = Dense8bit.variables_from_dense(params)
    q8 = jax.jit(lambda v, x: layer.apply(v, x))
    for name in dtypes:
        x = jnp.asarray(inputs(M, K, torch.float32).numpy()).astype(
            {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}[name]
        )
        med = wall_time(lambda x=x: q8(variables, x).block_until_ready())[0]
        row[f"jax_lt8_{name}_ms"] = 1e3 * med
        row[f"jax_lt8_{name}_ratio"] = paired(
            lambda: f32(params, x32).block_until_ready(),
            lambda x=x: q8(variables, x).block_until_ready(),
        )[2]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=None, help="comma-separated INxOUT, e.g. 4096x4096")
    ap.add_argument("--ms", default=None, help="comma-separated batch sizes, e.g. 1,16,128")
    ap.add_argument("--dtypes", default="f32,f16,bf16")
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001
        bnb = None
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")] if args.ms else MS
    dtypes = args.dtypes.split(",")
    if not args.no_jax:
        import jax  # noqa: F401 - loaded up front: both frameworks' thread pools are present

    model = cpu_model()
    # The level the CPU kernels run (detected, lowered by LT8_CPU_ISA), e.g. "amx".
    isa = _native.C.cpu_isa()
    print(
        f"{model}; {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}, "
        f"torch threads {torch.get_num_threads()}, lt8 CPU kernels: {isa}, "
        f"bitsandbytes {'yes' if bnb else 'not installed'}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_cpu-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}.csv"
    rows = []
    for K, N in shapes:
        for M in ms:
            row: dict = {"in": K, "out": N, "M": M, "load_before": load_avg()}
            row.update(torch_rows(K, N, M, dtypes, bnb))
            if not args.no_jax:
                row.update(jax_rows(K, N, M, dtypes))
            row["load_after"] = load_avg()
            row["torch_threads"] = torch.get_num_threads()
            row["isa"] = isa
            rows.append(row)
            print(_fmt(row), flush=True)
            _write_csv(rows, path)
    print(f"wrote {path}")


def _fmt(r: dict) -> str:
    parts = [f"{r['in']}x{r['out']} M={r['M']:<4} load {r['load_before']:.1f}"]
    parts.append(f"f32 {r['f32_linear_ms']:.2f}ms")
    for k in ("f32", "f16", "bf16"):
        if f"lt8_{k}_ms" in r:
            parts.append(f"lt8 {k} {r[f'lt8_{k}_ms']:.2f}ms ({r[f'lt8_{k}_ratio']:.2f}x)")
    parts.append(f"gemm {r['lt8_int8_gemm_ms']:.2f}ms")
    if "int_mm_ms" in r:
        parts.append(f"_int_mm {r['int_mm_ms']:.2f}ms")
    if "jax_f32_dense_ms" in r:
        parts.append(f"jax f32 {r['jax_f32_dense_ms']:.2f}ms")
        for k in ("f32", "f16", "bf16"):
            if f"jax_lt8_{k}_ms" in r:
                parts.append(f"jax {k} {r[f'jax_lt8_{k}_ratio']:.2f}x")
    return " | ".join(parts)


def _write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

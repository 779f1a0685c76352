"""Real model layer shapes on one GPU: fp16 nn.Linear (eager, CUDA graph) vs lt8 (eager, CUDA
graph) vs bitsandbytes' Linear8bitLt vs torchao's int8 paths, over batch sizes and outlier counts.

    python benchmarks/bench_models.py                      # the full grid (slow)
    python benchmarks/bench_models.py --models llama3-8b --ms 1,16,2048 --outliers 0,64,all

Shapes: the linear layers of Llama-3-8B (4096->4096, 4096->1024, 4096->14336, 14336->4096) and
Llama-3-70B (8192->8192, 8192->1024, 8192->28672, 28672->8192). Inputs are N(0, 1) in the
activation dtype with ``n`` outlier columns: in each, every row holds a value of magnitude > 6
(``all``: every column of the input holds one such value somewhere, the adversarial case a
long prompt gives Llama's down_proj). As in a model, where every layer's weight is read from
HBM because the layers before it pushed it out of L2, the fp16, lt8 and bitsandbytes layers
rotate over enough copies of the weight (and the inputs over as many buffers) that their bytes
exceed three times the L2 cache (``--no-rotate``: one copy, the L2-warm numbers of earlier
runs). Times are medians of CUDA-event timings (bench_linear's timers), per call.

torchao (when installed): int8 dynamic-activation/int8-weight and int8 weight-only, each
applied with ``quantize_`` and run under ``torch.compile`` as torchao documents; compiled once
per (shape, M) and only for the outlier counts asked (they ignore outliers); one copy of the
weight (not rotated: compiling a copy per rotation slot would take minutes).

Writes benchmarks/results/bench_models-<device>.csv (one row per shape, M, outlier count and
dtype) and a .png of lt8/fp16 ratios when matplotlib is there.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linear import cuda_time, graph_time  # noqa: E402

MODELS = {
    "llama3-8b": [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)],
    "llama3-70b": [(8192, 8192), (8192, 1024), (8192, 28672), (28672, 8192)],
}
MS = [1, 4, 16, 64, 256, 2048, 8192]
OUTLIERS = ["0", "8", "64", "512", "all"]
THRESHOLD = 6.0
ROTATE = 3


def inputs(M: int, K: int, outliers: str, dtype, n: int = ROTATE, seed: int = 0) -> list:
    """n input buffers (M, K) with the requested outlier columns (see the module docstring)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(M, K, device="cuda", generator=g, dtype=torch.float32)
        x.clamp_(-5.5, 5.5)  # no accidental outliers: the count is exactly what was asked
        if outliers == "all":
            rows = torch.randint(0, M, (K,), device="cuda", generator=g)
            x[rows, torch.arange(K, device="cuda")] = 7.0 * torch.sign(
                torch.randn(K, device="cuda")
            )
        elif int(outliers) > 0:
            cols = torch.randperm(K, device="cuda", generator=g)[: int(outliers)]
            x[:, cols] = x[:, cols] * 2 + torch.sign(x[:, cols]) * 7
        out.append(x.to(dtype))
    return out


def rotation(K: int, N: int, rotate: bool) -> int:
    """Copies of a (K, N) layer whose int8 weights together exceed 3x the L2 cache."""
    if not rotate:
        return 1
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    return max(ROTATE, -(-3 * l2 // (K * N)))


class Rotating(torch.nn.Module):
    """Calls its layers in turn, one per call: each call reads a weight that is not in L2."""

    def __init__(self, layers: list):
        super().__init__()
        self.layers = layers  # a plain list: no parameter registration, no copies
        self.i = 0

    def forward(self, x):
        layer = self.layers[self.i]
        self.i = (self.i + 1) % len(self.layers)
        return layer(x)


def lt8_layer(fp: torch.nn.Linear):
    import lt8

    N, K = fp.weight.shape
    q = lt8.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=THRESHOLD)
    q.weight = lt8.nn.Int8Params(fp.weight.data.float().cpu(), requires_grad=False)
    q.bias = torch.nn.Parameter(fp.bias.data.clone())
    return q.cuda()


def bnb_layer(fp: torch.nn.Linear, bnb):
    N, K = fp.weight.shape
    b = bnb.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=THRESHOLD)
    b.weight = bnb.nn.Int8Params(
        fp.weight.data.float().cpu(), requires_grad=False, has_fp16_weights=False
    )
    b.bias = torch.nn.Parameter(fp.bias.data.clone())
    return b.cuda()


def torchao_layers(fp: torch.nn.Linear) -> dict:
    """torchao's int8 layers, compiled as its README shows (quantize_ then torch.compile)."""
    import copy

    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    out = {}
    for name, cfg in (
        ("torchao_int8_dyn", Int8DynamicActivationInt8WeightConfig()),
        ("torchao_int8_wo", Int8WeightOnlyConfig()),
    ):
        m = torch.nn.Sequential(copy.deepcopy(fp))
        quantize_(m, cfg)
        out[name] = torch.compile(m, mode="max-autotune-no-cudagraphs", dynamic=False)
    return out


def run(args) -> None:
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - optional baseline; any import failure means "not there"
        bnb = None
    try:
        import torchao  # noqa: F401

        have_ao = not args.no_torchao
    except Exception:  # noqa: BLE001
        have_ao = False
    dev = torch.cuda.get_device_name().replace(" ", "_")
    out_dir = Path(args.out or Path(__file__).resolve().parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench_models-{dev}.csv"
    fields = [
        "model", "in", "out", "M", "outliers", "dtype", "fp16_eager_us", "fp16_graph_us",
        "lt8_eager_us", "lt8_graph_us", "bnb_eager_us", "torchao_int8_dyn_us",
        "torchao_int8_wo_us", "lt8_graph_over_fp16_graph", "lt8_eager_over_fp16_eager",
    ]  # fmt: skip
    new = not path.exists() or args.overwrite
    f = open(path, "w" if new else "a", newline="")
    w = csv.DictWriter(f, fieldnames=fields)
    if new:
        w.writeheader()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    deadline = time.monotonic() + args.budget_s
    us = 1e6
    for model in args.models:
        for K, N in MODELS[model]:
            for dname in args.dtypes:
                dt = dtypes[dname]
                n_rot = rotation(K, N, not args.no_rotate)
                fps = [torch.nn.Linear(K, N, device="cuda", dtype=dt) for _ in range(n_rot)]
                fp = Rotating(fps)
                q = Rotating([lt8_layer(layer) for layer in fps])
                b = None
                if bnb is not None and dname == "fp16":
                    b = Rotating([bnb_layer(layer, bnb) for layer in fps])
                for M in args.ms:
                    ao = {}
                    for outl in args.outliers:
                        if outl != "0" and outl != "all" and int(outl) >= K:
                            continue
                        if time.monotonic() > deadline:
                            print("time budget spent: stopping", flush=True)
                            f.close()
                            return
                        xs = inputs(M, K, outl, dt, n=max(ROTATE, n_rot))
                        row = {"model": model, "in": K, "out": N, "M": M, "outliers": outl,
                               "dtype": dname}  # fmt: skip
                        with torch.no_grad():
                            row["fp16_eager_us"] = cuda_time(fp, xs) * us
                            row["fp16_graph_us"] = graph_time(fp, xs) * us
                            row["lt8_eager_us"] = cuda_time(q, xs) * us
                            row["lt8_graph_us"] = graph_time(q, xs) * us
                            if b is not None:
                                row["bnb_eager_us"] = cuda_time(b, xs, iters=10) * us
                            if have_ao and dname == "fp16" and outl in args.torchao_outliers:
                                if not ao:
                                    ao = torchao_layers(fps[0])
                                for name, layer in ao.items():
                                    row[f"{name}_us"] = cuda_time(layer, xs) * us
                        row["lt8_graph_over_fp16_graph"] = (
                            row["lt8_graph_us"] / row["fp16_graph_us"]
                        )
                        row["lt8_eager_over_fp16_eager"] = (
                            row["lt8_eager_us"] / row["fp16_eager_us"]
                        )
                        w.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v)
                                    for k, v in row.items()})  # fmt: skip
                        f.flush()
                        print(
                            f"{model} {K}->{N} M={M} outliers={outl} {dname}: "
                            + " ".join(f"{k}={v:.1f}" for k, v in row.items() if k.endswith("_us"))
                            + f" | lt8/fp16 graph {row['lt8_graph_over_fp16_graph']:.2f}"
                            + f" eager {row['lt8_eager_over_fp16_eager']:.2f}",
                            flush=True,
                        )
                        del xs
                    del ao
                del fp, fps, q, b
                torch.cuda.empty_cache()
    f.close()
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), type=lambda s: s.split(","))
    p.add_argument(
        "--ms", default=",".join(map(str, MS)), type=lambda s: [int(v) for v in s.split(",")]
    )
    p.add_argument("--outliers", default=",".join(OUTLIERS), type=lambda s: s.split(","))
    p.add_argument("--torchao-outliers", default="0", type=lambda s: s.split(","),
                   help="outlier counts at which torchao is timed too (it ignores outliers)")  # fmt: skip
    p.add_argument("--dtypes", default="fp16,bf16", type=lambda s: s.split(","))
    p.add_argument("--no-torchao", action="store_true")
    p.add_argument(
        "--no-rotate", action="store_true", help="one copy of each weight (L2-warm timings)"
    )
    p.add_argument(
        "--budget-s", type=float, default=float(os.environ.get("LT8_BENCH_BUDGET_S", 1e9))
    )
    p.add_argument("--out", default=None, help="folder for the CSV (default benchmarks/results)")
    p.add_argument("--overwrite", action="store_true", help="start a new CSV instead of appending")
    run(p.parse_args())


if __name__ == "__main__":
    main()

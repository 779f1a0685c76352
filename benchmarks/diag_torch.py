"""Where the time of lt8's fused op goes (GPU): its parts timed alone, and the engines side by
side. A diagnostic for benchmarks/NOTES.md, not the benchmark itself (bench_linear.py).

    python benchmarks/diag_torch.py [--shape 8192x8192] [--ms 16,128,4096]

Prints median CUDA-event times (us) of: fp16 nn.Linear, torch._int_mm (cuBLASLt int8 GEMM, the
bound of lt8's tensor-core path), lt8 int8_gemm, quantize_rows, and the fused int8_linear with
cuBLASLt on/off, at threshold 0 and 6, each through a CUDA graph of 4 rotated inputs.
"""

from __future__ import annotations

import argparse

import torch
from bench_linear import graph_time, realistic_inputs

import lt8.torch  # noqa: F401  (registers torch.ops.lt8)
from lt8._native import C


def graph_us(fn, inputs) -> float:
    return graph_time(fn, inputs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192x8192")
    ap.add_argument("--ms", default="1,16,128,512,4096")
    args = ap.parse_args()
    K, N = (int(v) for v in args.shape.split("x"))
    W = torch.randn(N, K, device="cuda") * 0.02
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    W16 = W.half()
    bias = torch.zeros(N, device="cuda", dtype=torch.float16)
    print(f"{torch.cuda.get_device_name()}, {K}x{N}, cuBLASLt available: {C.cublaslt_available()}")
    for M in (int(v) for v in args.ms.split(",")):
        xs = [x for x in realistic_inputs(M, K, 4)]
        qs = [torch.ops.lt8.quantize_rows(x, 6.0)[0] for x in xs]
        row = {"fp16": graph_us(lambda x: torch.nn.functional.linear(x, W16, bias), xs)}
        if M > 16:
            row["torch._int_mm"] = graph_us(lambda q: torch._int_mm(q, CB.t()), qs)
        row["lt8 int8_gemm"] = graph_us(lambda q: torch.ops.lt8.int8_gemm(q, CB), qs)
        row["quantize t=6"] = graph_us(lambda x: torch.ops.lt8.quantize_rows(x, 6.0), xs)
        for t in (0.0, 6.0):
            row[f"linear t={t:g}"] = graph_us(
                lambda x: torch.ops.lt8.int8_linear(x, CB, SCB, bias, t), xs
            )
        C.set_cublaslt_enabled(False)
        row["linear t=6 dp4a"] = graph_us(
            lambda x: torch.ops.lt8.int8_linear(x, CB, SCB, bias, 6.0), xs
        )
        C.set_cublaslt_enabled(True)
        print(f"M={M:5d} " + " | ".join(f"{k} {v:7.1f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()

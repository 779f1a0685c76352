"""One decode call per case, to run under Nsight Compute (ncu), which profiles each kernel on
its own with caches flushed: the decode kernels' own duration, DRAM throughput, occupancy and
stall reasons, next to cuBLAS's fp16 GEMV on the same shape.

    ncu --clock-control none --section SpeedOfLight --csv --page details \\
        python benchmarks/diag_decode_ncu.py --shapes 8192x8192 --ms 1,16

Prints the order of the calls (each case: lt8 then fp16 nn.Linear), so that the kernels in
ncu's report can be matched to them.
"""

from __future__ import annotations

import argparse

import torch

import lt8.torch  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="8192x8192,4096x14336")
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--outliers", type=int, default=0, help="outlier columns in x")
    args = ap.parse_args()
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        W = torch.randn(N, K, device="cuda") * 0.02
        CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
        Wh = W.half()
        for M in (int(m) for m in args.ms.split(",")):
            x = (torch.randn(M, K, device="cuda") * 0.5).clamp(-5.0, 5.0)
            if args.outliers:
                x[0, torch.randperm(K, device="cuda")[: args.outliers]] = 8.0
            x = x.half()
            with torch.no_grad():
                torch.ops.lt8.int8_linear(x, CB, SCB, None, 6.0)
                torch.nn.functional.linear(x, Wh)
            torch.cuda.synchronize()
            print(f"case {K}->{N} M={M}: lt8 kernels, then fp16 kernels", flush=True)


if __name__ == "__main__":
    main()

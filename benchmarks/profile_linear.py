"""One call of lt8's fused op per batch size, for Nsight Compute (kernel-level times):

    ncu --clock-control none --metrics gpu__time_duration.sum \
        python3 benchmarks/profile_linear.py --ms 16,4096
"""

from __future__ import annotations

import argparse

import torch
from bench_linear import realistic_inputs

import lt8.torch  # noqa: F401  (registers torch.ops.lt8)

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="8192x8192")
ap.add_argument("--ms", default="16,4096")
ap.add_argument("--threshold", type=float, default=6.0)
args = ap.parse_args()
K, N = (int(v) for v in args.shape.split("x"))
CB, SCB, _ = torch.ops.lt8.quantize_rows(torch.randn(N, K, device="cuda") * 0.02, 0.0)
bias = torch.zeros(N, device="cuda", dtype=torch.float16)
for M in (int(v) for v in args.ms.split(",")):
    x = realistic_inputs(M, K, 1)[0]
    torch.cuda.synchronize()
    torch.ops.lt8.int8_linear(x, CB, SCB, bias, args.threshold)
    torch.cuda.synchronize()

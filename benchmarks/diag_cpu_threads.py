"""CPU: an lt8 layer right after a torch op, and MiniLM-sized layers, against float32.

    python benchmarks/diag_cpu_threads.py [--pool]

Part 1 times ``Linear8bitLt(384 -> 1536)`` on 192 rows alone and right after ``F.gelu`` (torch's
OpenMP workers spin for a while after each op: a second thread pool beside them loses its
cores; ``--pool`` runs lt8's own pool instead of OpenMP regions to show it). Part 2 times the
MiniLM layer shapes (float32 ``nn.Linear`` vs ``Linear8bitLt``, plus quantize_rows and the int8
GEMM alone). Microseconds per call, 200 calls after 10.
"""

from __future__ import annotations

import argparse
import time

import torch

import lt8.torch  # noqa: F401
from lt8 import _native
from lt8.torch.nn import Linear8bitLt


def per_call_us(f, n: int = 200) -> float:
    for _ in range(10):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


def int8_layer(lin: torch.nn.Linear) -> Linear8bitLt:
    q = Linear8bitLt(lin.in_features, lin.out_features, has_fp16_weights=False, threshold=6.0)
    q.load_state_dict(lin.state_dict())
    return q.to("cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", action="store_true", help="lt8's own thread pool, not OpenMP")
    args = ap.parse_args()
    if args.pool:
        _native.C.use_openmp_threads(False)
    torch.manual_seed(0)
    gelu = torch.nn.functional.gelu
    with torch.no_grad():
        x, h = torch.randn(192, 384), torch.randn(192, 1536)
        lin = torch.nn.Linear(384, 1536)
        q = int8_layer(lin)
        print(
            f"gelu alone {per_call_us(lambda: gelu(h)):.1f} | fp32 lin {per_call_us(lambda: lin(x)):.1f}"
            f" | lt8 lin {per_call_us(lambda: q(x)):.1f}"
            f" | fp32 lin+gelu {per_call_us(lambda: gelu(lin(x))):.1f}"
            f" | lt8 lin+gelu {per_call_us(lambda: gelu(q(x))):.1f}"
        )
        for K, N in [(384, 384), (384, 1536), (1536, 384)]:
            x = torch.randn(192, K)
            lin = torch.nn.Linear(K, N)
            q = int8_layer(lin)
            xq, _, _ = torch.ops.lt8.quantize_rows(x, 6.0)
            CB = q.weight.data
            tf, tq = per_call_us(lambda: lin(x)), per_call_us(lambda: q(x))
            tr = per_call_us(lambda: torch.ops.lt8.quantize_rows(x, 6.0))
            tg = per_call_us(lambda: torch.ops.lt8.int8_gemm(xq, CB))
            print(
                f"{K}->{N} M=192: fp32 {tf:.0f} us, lt8 {tq:.0f} us ({tq / tf:.2f}x); "
                f"quantize_rows {tr:.0f}, int8_gemm {tg:.0f}"
            )
    print(f"torch threads {torch.get_num_threads()}, OpenMP regions: {not args.pool}")


if __name__ == "__main__":
    main()

"""Per-kernel GPU time of one lt8 linear call (torch.profiler), to see where a layer's time goes.

    python benchmarks/diag_kernels.py --shapes 14336x4096,4096x14336 --m 2048 --outliers 0,all

Prints, per shape and outlier count, each kernel's mean time per call (us) over --iters calls,
next to fp16 nn.Linear's. Outlier columns as in bench_models.py (one |x| >= 6 entry each).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import lt8.torch  # noqa: F401


def inputs(M: int, K: int, n_out: int, dtype) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(M, K, device="cuda", generator=g) * 0.5).clamp(-5.0, 5.0)
    if n_out:
        cols = torch.randperm(K, device="cuda", generator=g)[:n_out]
        rows = torch.randint(0, M, (n_out,), device="cuda", generator=g)
        x[rows, cols] = 8.0
    return x.to(dtype)


def kernel_times(fn, iters: int) -> list[tuple[str, float]]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0 and ev.count >= iters:
            rows.append((ev.key, t / iters))
    return sorted(rows, key=lambda r: -r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="14336x4096,4096x14336,4096x4096")
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--outliers", default="0,all")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    dtype = torch.float16
    for shape in args.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        W = torch.randn(N, K, device="cuda") * 0.02
        CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
        Wh = W.to(dtype)
        for o in args.outliers.split(","):
            n_out = K if o == "all" else int(o)
            x = inputs(args.m, K, n_out, dtype)
            with torch.no_grad():
                rows = kernel_times(
                    lambda: torch.ops.lt8.int8_linear(x, CB, SCB, None, 6.0), args.iters
                )
                ref = kernel_times(lambda: torch.nn.functional.linear(x, Wh), args.iters)
            total = sum(t for _, t in rows)
            print(
                f"== {K}->{N} M={args.m} outliers={o}: lt8 {total:.1f} us, fp16 {sum(t for _, t in ref):.1f} us"
            )
            for name, t in rows:
                print(f"   {t:8.1f} us  {name[:110]}")


if __name__ == "__main__":
    main()

"""The decode GEMV engines side by side: lt8's fused op under a CUDA graph at M <= 16 on the
real layer shapes of bench_models (weights rotated out of L2, as there), for whichever engine
the environment selects. Run once per setting and compare:

    LT8_GEMV_TC=0 python benchmarks/bench_gemv.py      # the dp4a GEMV
    LT8_GEMV_TILES=2 python benchmarks/bench_gemv.py   # the mma GEMV with 2 tiles per block
    python benchmarks/bench_gemv.py                    # the default choice

Prints one line per shape and M (microseconds per call) and the fp16 nn.Linear graph time
beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linear import graph_time  # noqa: E402
from bench_models import MODELS, ROTATE, Rotating, inputs, lt8_layer, rotation  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), type=lambda s: s.split(","))
    p.add_argument("--ms", default="1,4,8,16", type=lambda s: [int(m) for m in s.split(",")])
    p.add_argument("--outliers", default="0")
    p.add_argument("--fp16", action="store_true", help="also time fp16 nn.Linear")
    args = p.parse_args()
    env = (
        " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("LT8_GEMV")) or "default"
    )
    for model in args.models:
        for K, N in MODELS[model]:
            n_rot = rotation(K, N, True)
            fps = [torch.nn.Linear(K, N, device="cuda", dtype=torch.float16) for _ in range(n_rot)]
            q = Rotating([lt8_layer(layer) for layer in fps])
            fp = Rotating(fps)
            for M in args.ms:
                xs = inputs(M, K, args.outliers, torch.float16, n=max(ROTATE, n_rot))
                with torch.no_grad():
                    t = graph_time(q, xs) * 1e6
                    f = graph_time(fp, xs) * 1e6 if args.fp16 else float("nan")
                print(
                    f"gemv [{env}] {K}->{N} M={M} outliers={args.outliers}: lt8 {t:.2f} us"
                    f" fp16 {f:.2f} us ratio {t / f:.2f}",
                    flush=True,
                )
            del fps, q, fp
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Where the time of one decoded token goes in bench_e2e's model (issue 14, host cost).

    python benchmarks/diag_e2e_profile.py --variants fp16-static,lt8-static --batches 1,16
    python benchmarks/diag_e2e_profile.py --variants fp16,lt8 --prefill 2048 --tokens 0

Builds bench_e2e's config Llama (Llama-3-8B layer shapes, outlier channels), warms each variant
up with a whole ``generate`` (the static cache compiles there), then runs ``generate`` of
``--tokens`` new tokens under ``torch.profiler`` and prints, per variant and batch: wall
milliseconds per token, GPU kernel time per token (the sum of kernel durations), how many CUDA
graph launches and kernel launches the host made per token, and the host (CPU) time per call of
the ops that dominate it, lt8's and aten's linear ops included. A token whose wall time is far
above its kernel time is bound by the host. With ``--prefill N``: GPU time per kernel of one
eager forward over N tokens.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_e2e import build_fp16_model, make_variant


def profile_generate(model, ids, static: bool, tokens: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    if static:
        kw["cache_implementation"] = "static"
    with torch.no_grad():
        model.generate(ids, **kw)  # warm-up, compiles for the static cache
        model.generate(ids, **kw)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, **kw)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3 / tokens
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.generate(ids, **kw)
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.device_time_total for e in events if e.device_type.name == "CUDA") / tokens
    launches = {
        name: sum(e.count for e in events if e.key == name)
        for name in ("cudaGraphLaunch", "cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                     "cuLaunchKernelEx")
    }  # fmt: skip
    print(
        f"  wall {wall:.3f} ms/token (unprofiled), GPU kernels {kernel_us / 1e3:.3f} ms/token; "
        + ", ".join(f"{k} {v / tokens:.1f}/token" for k, v in launches.items() if v),
        flush=True,
    )
    cpu = [e for e in events if e.device_type.name == "CPU" and e.count > 0]
    for label, pick in (
        ("ops by host time per call", lambda e: e.key.startswith(("lt8::", "aten::"))),
        ("all by self host time", lambda e: True),
    ):
        rows = sorted((e for e in cpu if pick(e)), key=lambda e: -e.self_cpu_time_total)[:14]
        print(f"  {label} (calls/token, total us/call, self us/call):")
        for e in rows:
            print(
                f"    {e.key[:60]:60s} {e.count / tokens:6.1f} {e.cpu_time_total / e.count:8.1f}"
                f" {e.self_cpu_time_total / e.count:8.1f}"
            )


def profile_prefill(model, prompt, top: int) -> None:
    """GPU time per kernel name in one forward over the prompt (eager), largest first."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(2):
            model(prompt)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                model(prompt)
            torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in kernels) / 3
    print(f"  GPU kernels {total / 1e3:.3f} ms per forward; top kernels (us per forward, calls):")
    for e in sorted(kernels, key=lambda e: -e.device_time_total)[:top]:
        print(f"    {e.device_time_total / 3:9.1f} {e.count / 3:6.0f}  {e.key[:110]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="fp16-static,lt8-static", type=lambda s: s.split(","))
    p.add_argument("--batches", default="1,16", type=lambda s: [int(b) for b in s.split(",")])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--prefill", type=int, default=0, help="profile a forward of this many tokens")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    if any(v.startswith("bnb") for v in args.variants):
        p.error("bitsandbytes loads from a saved checkpoint: profile it with bench_e2e.py's setup")

    fp16_model = build_fp16_model(args.layers)
    g = torch.Generator().manual_seed(2)
    for name in args.variants:
        model = make_variant(name, fp16_model, saved=None)
        if args.prefill:
            print(f"== {name} prefill {args.prefill} tokens", flush=True)
            prompt = torch.randint(0, 32000, (1, args.prefill), generator=g).cuda()
            profile_prefill(model, prompt, args.top)
        for b in args.batches if args.tokens else ():
            ids = torch.randint(0, 32000, (b, 16), generator=g).cuda()
            print(f"== {name} batch {b}", flush=True)
            profile_generate(model, ids, name.endswith("-static"), args.tokens)
        if model is not fp16_model:
            del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

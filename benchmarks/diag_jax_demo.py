"""The demo's JAX forwards (MiniLM, 16 sentences), int8 and float32 timed in alternation:

    python benchmarks/diag_jax_demo.py pair 30     # 30 pairs: medians and the paired ratio
    perf record -g python benchmarks/diag_jax_demo.py loop8 15    # 15 s of int8 calls, to profile
    perf record -g python benchmarks/diag_jax_demo.py loop32 15   # the same for float32

(benchmarks/NOTES.md, "CPU: the demo's bound").
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import jax.numpy as jnp

from lt8.demo import SENTENCES, minilm_jax, model_files
from lt8.demo.minilm_torch import BertEncoder
from lt8.torch import replace_linear

THRESHOLD = 6.0


def forwards():
    """(int8 forward, float32 forward): each runs the demo's jitted embed once, blocked."""
    files = model_files.resolve(None)
    tok = model_files.load_tokenizer(files)
    sd = model_files.load_state_dict(files)
    fp32 = BertEncoder.from_state_dict(files.config, sd, files.pooling, files.normalize)
    int8 = replace_linear(copy.deepcopy(fp32), threshold=THRESHOLD, skip_modules=())
    p8 = minilm_jax.params_from_torch(int8)
    p32 = minilm_jax.params_from_torch(fp32)
    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(16)]
    batch = {k: jnp.asarray(v) for k, v in model_files.tokenize(tok, sentences).items()}
    print("batch", batch["input_ids"].shape)
    kw = dict(config=files.config, pooling=files.pooling, normalize=files.normalize)

    def run(params):
        return lambda: minilm_jax.embed(
            params, **batch, threshold=THRESHOLD, **kw
        ).block_until_ready()

    return run(p8), run(p32)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "pair"
    arg = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    f8, f32 = forwards()
    f8()
    f32()
    if mode in ("loop8", "loop32"):
        f = f8 if mode == "loop8" else f32
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < arg:
            f()
        return
    r8, r32, ratios = [], [], []
    for _ in range(int(arg)):
        a = time.perf_counter()
        f8()
        t8 = time.perf_counter() - a
        a = time.perf_counter()
        f32()
        t32 = time.perf_counter() - a
        r8.append(t8)
        r32.append(t32)
        ratios.append(t8 / t32)
    print(
        f"int8 median {statistics.median(r8) * 1e3:.2f} ms, float32 median"
        f" {statistics.median(r32) * 1e3:.2f} ms, paired ratio median {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()

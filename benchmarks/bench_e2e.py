"""End to end in transformers on one GPU: a Llama built from a config with Llama-3-8B layer
shapes, fp16 vs lt8 vs bitsandbytes vs torchao.

    python benchmarks/bench_e2e.py                       # every variant
    python benchmarks/bench_e2e.py --variants fp16,lt8   # a subset

The model: hidden 4096, intermediate 14336, 32 query / 8 KV heads, ``--layers`` layers (8),
vocab 32000, random fp16 weights (transformers' init), and 8 hidden channels whose RMSNorm gains
are 20 in every layer, so that activations carry outlier columns as real LLMs' do (over a long
prompt every column of the down_proj input then holds some |x| >= 6).

Measured per variant: prefill of 2048 tokens at batch 1 (median of CUDA-event timings of one
forward); greedy decode of 64 new tokens after a 16-token prompt at batch 1 and 16, eager (the
default dynamic cache) and, for the ``-static`` variants, with transformers' static cache (which
compiles the forward); weights on the GPU; logits relative error of the prefill against fp16's
(||l - l_fp16|| / ||l_fp16||) and greedy-token agreement with fp16 at batch 1.

Writes benchmarks/results/bench_e2e-<GPU name>.csv with the columns
variant,prefill_ms,decode_ms_b1,decode_ms_b16,weights_gib,logits_relerr,token_agreement.
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch
from model_shapes import LLAMA_SHAPES, OUTLIER_CHANNELS, OUTLIER_GAIN, THRESHOLD

VARIANTS = ["fp16", "fp16-static", "lt8", "lt8-static", "bnb", "torchao", "torchao-static"]
FIELDS = ["variant", "prefill_ms", "decode_ms_b1", "decode_ms_b16", "weights_gib",
          "logits_relerr", "token_agreement"]  # fmt: skip


def build_fp16_model(layers: int):
    """The config-built Llama with outlier channels, fp16 on the GPU, deterministic."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = LLAMA_SHAPES["8b"]
    cfg = LlamaConfig(
        hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
        num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"],
        num_hidden_layers=layers, vocab_size=dims["vocab"], max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16)
    g = torch.Generator().manual_seed(1)
    chans = torch.randperm(cfg.hidden_size, generator=g)[:OUTLIER_CHANNELS].cuda()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[chans] = OUTLIER_GAIN
            layer.post_attention_layernorm.weight[chans] = OUTLIER_GAIN
    return model.eval()


def weights_gib(model) -> float:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_cuda and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
        scb = getattr(t, "SCB", None)  # int8 layers keep their scales beside the weight
        if isinstance(scb, torch.Tensor) and scb.is_cuda and scb.data_ptr() not in seen:
            seen.add(scb.data_ptr())
            total += scb.numel() * scb.element_size()
    return total / 2**30


def time_cuda(fn, iters: int) -> float:
    """Median milliseconds of fn over CUDA-event timings (one warm-up call first)."""
    fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def measure(model, static: bool, prompt, decode_prompts) -> dict:
    res = {}
    with torch.no_grad():
        logits = model(prompt).logits.float()
        res["prefill_ms"] = time_cuda(lambda: model(prompt), iters=5)
        kw = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
        if static:
            kw["cache_implementation"] = "static"
        tokens = None
        for b, ids in decode_prompts.items():
            model.generate(ids, **kw)  # warm-up (and compilation for the static cache)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(ids, **kw)
            torch.cuda.synchronize()
            res[f"decode_ms_b{b}"] = (time.perf_counter() - t0) * 1e3 / 64
            if b == 1:
                tokens = out[0, ids.shape[1] :].cpu()
    return res, logits, tokens


def make_variant(name: str, fp16_model, saved: Path):
    base = name.removesuffix("-static")
    if base == "fp16":
        return fp16_model
    if base == "lt8":
        import copy

        import lt8.hf

        m = copy.deepcopy(fp16_model)
        return lt8.hf.convert_hf_model(m, threshold=THRESHOLD).eval()
    if base == "bnb":
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=THRESHOLD)
        return AutoModelForCausalLM.from_pretrained(
            saved, quantization_config=q, device_map="cuda", dtype=torch.float16
        ).eval()
    if base == "torchao":
        import copy

        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        m = copy.deepcopy(fp16_model)
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        return m.eval()
    raise ValueError(f"unknown variant {name!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), type=lambda s: s.split(","))
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--out", default=None, help="folder for the CSV (default benchmarks/results)")
    args = p.parse_args()

    dev = torch.cuda.get_device_name().replace(" ", "_")
    out_dir = Path(args.out or Path(__file__).resolve().parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench_e2e-{dev}.csv"

    fp16_model = build_fp16_model(args.layers)
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 32000, (1, 2048), generator=g).cuda()
    decode_prompts = {b: torch.randint(0, 32000, (b, 16), generator=g).cuda() for b in (1, 16)}

    tmp = tempfile.TemporaryDirectory()
    saved = Path(tmp.name)
    if any(v.startswith("bnb") for v in args.variants):
        fp16_model.save_pretrained(saved)

    ref_logits = ref_tokens = None
    rows = []
    order = sorted(args.variants, key=lambda v: not v.startswith("fp16"))  # fp16 first: reference
    if "fp16" not in order:
        order.insert(0, "fp16")
    for name in order:
        torch.cuda.empty_cache()
        base_mem = torch.cuda.memory_allocated()
        model = make_variant(name, fp16_model, saved)
        row = {"variant": name, "weights_gib": weights_gib(model)}
        try:
            res, logits, tokens = measure(model, name.endswith("-static"), prompt, decode_prompts)
        except Exception as err:  # noqa: BLE001 - record which variant failed and go on
            print(f"{name}: FAILED {type(err).__name__}: {err}", flush=True)
            row["prefill_ms"] = f"failed: {type(err).__name__}"
            rows.append(row)
            continue
        row.update(res)
        if name == "fp16":
            ref_logits, ref_tokens = logits, tokens
        row["logits_relerr"] = float((logits - ref_logits).norm() / ref_logits.norm())
        row["token_agreement"] = float((tokens == ref_tokens).float().mean())
        rows.append(row)
        print(
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ),
            f"(GPU memory delta {(torch.cuda.memory_allocated() - base_mem) / 2**30:.2f} GiB)",
            flush=True,
        )
        if model is not fp16_model:
            del model
        gc.collect()
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

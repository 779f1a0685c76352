"""``python -m lt8 demo``: quantize a model with lt8 and compare it with its floating-point self.

The default model is a small two-layer MLP block with random weights and realistic activation
outliers (a few hidden channels ~20x larger than the rest, as in large transformers). The demo
quantizes every Linear with ``lt8.torch.replace_linear``, runs the same int8 weights through
``lt8.jax`` when JAX is installed, and prints memory, accuracy, torch-vs-JAX agreement, timings.
"""

from __future__ import annotations

import time

import numpy as np


def _mlp(torch, d_model: int, d_ff: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(d_model, d_ff), torch.nn.GELU(), torch.nn.Linear(d_ff, d_model)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5 if p.dim() == 2 else 0.01))
    return model


def _inputs(torch, rows: int, d_model: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(rows, d_model, generator=g)
    outlier_channels = torch.randperm(d_model, generator=g)[: max(1, d_model // 200)]
    x[:, outlier_channels] *= 20.0  # emergent outlier features, as LLM.int8() describes
    return x


def _time(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def run_demo(model: str | None = None, device: str | None = None) -> int:
    import torch

    import lt8
    from lt8.torch import Linear8bitLt, replace_linear

    if model is not None:
        raise SystemExit("--model needs the model demo (not in this build); run without --model")
    device = device or ("cuda" if torch.cuda.is_available() and lt8.has_cuda() else "cpu")
    d_model, d_ff, rows, threshold = 1024, 4096, 64, 6.0
    fp32 = _mlp(torch, d_model, d_ff, seed=0).to(device)
    x = _inputs(torch, rows, d_model, seed=0).to(device)
    print(f"lt8 {lt8.__version__} demo on {device}: MLP {d_model} -> {d_ff} -> {d_model}, "
          f"{rows} rows, threshold {threshold}")

    q = replace_linear(_mlp(torch, d_model, d_ff, seed=0), threshold=threshold).to(device)
    q_plain = replace_linear(_mlp(torch, d_model, d_ff, seed=0), threshold=0.0).to(device)
    layers = [m for m in q.modules() if isinstance(m, Linear8bitLt)]
    fp32_bytes = sum(p.numel() * 4 for m in fp32.modules() if isinstance(m, torch.nn.Linear) for p in [m.weight])
    int8_bytes = sum(m.weight.numel() + m.weight.SCB.numel() * 4 for m in layers)
    print(f"  Linear weight memory: fp32 {fp32_bytes / 2**20:.1f} MiB, fp16 {fp32_bytes / 2**21:.1f} MiB, "
          f"lt8 int8 {int8_bytes / 2**20:.1f} MiB ({int8_bytes / (fp32_bytes / 2):.2f}x fp16)")

    with torch.no_grad():
        ref = fp32(x).double()
        out = q(x).double()
        out_plain = q_plain(x).double()
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    cos = float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0))
    print(f"  relative error vs fp32: {rel(out):.2e} with outlier decomposition, "
          f"{rel(out_plain):.2e} without (threshold 0); cosine similarity {cos:.6f}")

    t_fp = _time(lambda: fp32(x))
    t_q = _time(lambda: q(x))
    print(f"  torch forward: fp32 {t_fp * 1e3:.2f} ms, lt8 int8 {t_q * 1e3:.2f} ms (host clock)")

    try:
        import jax
        import jax.numpy as jnp

        from lt8.jax import ops as jops
    except ImportError as err:
        print(f"  JAX part skipped: {err}")
        return 0
    params = [(m.weight.detach().cpu().numpy(), m.weight.SCB.detach().cpu().numpy(),
               m.bias.detach().cpu().numpy()) for m in layers]
    platform = "gpu" if device == "cuda" else "cpu"
    try:
        jdev = jax.devices(platform)[0]
    except RuntimeError:
        jdev = jax.devices("cpu")[0]

    @jax.jit
    def jax_forward(xj, p):
        (cb1, s1, b1), (cb2, s2, b2) = p
        h = jops.linear(xj, cb1, s1, b1, threshold=threshold)
        h = jax.nn.gelu(h, approximate=False)
        return jops.linear(h, cb2, s2, b2, threshold=threshold)

    xj = jax.device_put(jnp.asarray(x.cpu().numpy()), jdev)
    pj = jax.device_put(params, jdev)
    out_jax = np.asarray(jax_forward(xj, pj))
    same_platform = (platform == "gpu") == (jdev.platform == "gpu")
    diff = np.abs(out_jax.astype(np.float64) - out.cpu().numpy())
    exact = np.array_equal(out_jax, q(x).detach().cpu().numpy())
    print(f"  JAX ({jdev.platform}) vs torch ({device}) on the same int8 weights: "
          f"{'bit-identical' if exact else f'max |diff| {diff.max():.2e}'}"
          f"{'' if same_platform else ' (different platforms)'}")
    t_j = _time(lambda: jax_forward(xj, pj).block_until_ready())
    print(f"  JAX jit forward: {t_j * 1e3:.2f} ms (host clock)")
    return 0

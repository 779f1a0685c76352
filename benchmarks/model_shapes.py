"""The benchmark models' facts, shared by the torch and JAX end-to-end and multi-GPU scripts
(no framework imports): Llama layer shapes, and how outlier channels are planted."""

from __future__ import annotations

#: lt8's outlier threshold in every benchmark.
THRESHOLD = 6.0
#: Hidden channels whose RMSNorm gains are OUTLIER_GAIN in every layer, so that activations
#: carry outlier columns as real LLMs' do.
OUTLIER_CHANNELS = 8
OUTLIER_GAIN = 20.0

#: Llama-3-8B and Llama-3-70B shapes (the layer count is each script's choice).
LLAMA_SHAPES = {
    "8b": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=32000),
    "70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=32000),
}
#: ``--tiny`` (CPU runs): a few million parameters; 16 query / 8 KV heads so that up to 8 ranks
#: or devices split them.
TINY_SHAPES = {
    "8b": dict(hidden=128, intermediate=448, heads=16, kv_heads=8, vocab=512),
    "70b": dict(hidden=256, intermediate=896, heads=16, kv_heads=8, vocab=512),
}

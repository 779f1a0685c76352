"""The README's python code blocks run as written.

Every fenced ``python`` block of README.md is executed on its own (a fresh namespace, in a
temporary working directory), so a snippet that uses a name it never defines fails here. The
snippets pick the GPU when there is one (torch.cuda and a CUDA build of lt8), else the CPU, at
sizes that run on a CPU in seconds. A block that can only run on a GPU is marked by the HTML
comment ``<!-- readme-test: cuda -->`` on the line before it: it is skipped without CUDA (an
error under LT8_REQUIRE_CUDA=1). Besides raising nothing, each block's results are checked below
against what the snippet says it computes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REQUIRE_CUDA, cuda_available, require_cuda

README = Path(__file__).resolve().parents[2] / "README.md"
CUDA_MARK = "<!-- readme-test: cuda -->"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, needs CUDA) of each fenced python block."""
    blocks = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append((line, m.group(1), before == CUDA_MARK))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5
    assert CUDA_MARK not in README.read_text() or any(c for _, _, c in BLOCKS)


def _needs(code: str) -> None:
    for mod in ("torch", "jax", "flax", "optax", "transformers"):
        if re.search(rf"^\s*(import|from) {mod}\b|import .*\b{mod}\b", code, re.M):
            pytest.importorskip(mod)


@pytest.mark.parametrize("line,code,cuda", BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line, code, cuda, tmp_path, monkeypatch):
    if cuda:
        require_cuda()
    _needs(code)
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), ns)
    _check(code, ns)
    if REQUIRE_CUDA and "device" in ns:
        assert ns["device"] == "cuda" and cuda_available()


def _check(code: str, ns: dict) -> None:
    """What each snippet claims, checked on its own results."""
    if "lj.quantize_kernel(" in code:  # JAX: a Flax kernel quantized in its (out, in) orientation
        CB, SCB = np.asarray(ns["CB"]), np.asarray(ns["SCB"])
        kernel = np.asarray(ns["dense_params"]["kernel"], dtype=np.float64)
        np.testing.assert_array_equal(SCB, np.abs(kernel).max(axis=0).astype(np.float32))
        assert CB.shape == kernel.T.shape
        ref = np.asarray(ns["x"], np.float64) @ kernel + np.asarray(ns["dense_params"]["bias"])
        y = np.asarray(ns["y"], np.float64)
        assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()
    if "Linear8bitLt(1024, 1024" in code:  # torch: int8 weight with scales, close to fp
        import torch

        layer, fp = ns["layer"], ns["fp"]
        assert layer.weight.dtype == torch.int8 and layer.weight.SCB.shape == (1024,)
        x = torch.randn(8, 1024, dtype=ns["dtype"], device=ns["device"])
        with torch.no_grad():
            W, b = fp.weight.detach().double(), fp.bias.detach().double()  # (shared with layer)
            ref = x.double() @ W.T.to(x.device) + b.to(x.device)
            err = (layer(x).double() - ref).abs().max() / ref.abs().max()
        assert err < 0.05, err
        assert type(ns["model"].lm_head) is torch.nn.Linear
        assert ns["logits"].shape == (4, 100)
    if "add_lora(" in code:
        import torch

        sd = torch.load("adapter.pt", weights_only=True)
        assert sd and all(".lora_A." in f".{k}" or ".lora_B." in f".{k}" for k in sd)
    if "save_pretrained_8bit(" in code:
        import lt8

        layers = [m for m in ns["model"].modules() if isinstance(m, lt8.nn.Linear8bitLt)]
        assert layers and all(m.weight.dtype.itemsize == 1 for m in layers)
        assert ns["out"].shape == (1, 7)

"""Interop with real bitsandbytes (0.50.2, pinned in scripts/requirements.txt) on the CPU.

Checkpoints both ways (bitsandbytes writes, lt8 loads; lt8 writes, bitsandbytes loads) and the
outputs of the two libraries' Linear8bitLt side by side. bitsandbytes' CPU numerics, from its
source (bitsandbytes/backends/default/ops.py, autograd/_functions.py, nn/modules.py):

- quantization: outlier *elements* (|x| >= threshold) are zeroed, the row absmax is taken over
  what is left (other entries of an outlier column count), then ``round(x * float32(127 /
  absmax))``, which torch evaluates as ``x * float32(float32(1 / absmax) * 127)``: three
  roundings, where lt8 rounds ``(x * 127) / absmax`` once (cuda/numerics.h), so the two differ
  exactly at the ties that the factor flips (and the factor overflows for absmax < 127 / FLT_MAX,
  giving zeros). Weights are quantized from an fp16 copy.
- eval mode (MatMul8bitLt): x is quantized from an fp16 copy (bfloat16 and float32 inputs are
  rounded to fp16 first); exact int32 product, ``C * (row * col) * 6.200124e-05`` in float32
  (that constant is 1/127^2 to 1.8e-6 relative), + bias, rounded to x's dtype; outlier columns
  are added by ``addmm`` in x's dtype with the weight columns dequantized to x's dtype.
- training mode on the CPU (MatMul8bitFp): the weight-only path, ``x @ (CB * SCB / 127).T`` with
  the weight rounded to x's dtype, like lt8's ``force_no_igemmlt``.

Each comparison asserts both libraries against float64 references of their own rules and the
outputs within the sum of those bounds plus the references' exact difference; nothing is
compared with a tolerance taken from either library's outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import (
    linear_error_bound,
    linear_ref,
    quantize_rows_ref,
    tie_rows,
    weight_linear_ref,
)

import lt8

bnb = pytest.importorskip("bitsandbytes")

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
BNB_INV127SQ = float(np.float32(6.200124e-05))  # bitsandbytes' literal for 1 / 127^2


def t64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def bnb_quantize_ref(x: np.ndarray, threshold: float):
    """bitsandbytes' CPU int8_vectorwise_quant in float64 with its float32 steps: (q, absmax,
    outlier column mask). Rows must not be all zero (bitsandbytes divides by the absmax)."""
    x = np.asarray(x, np.float64)
    outliers = (np.abs(x) >= threshold) if threshold > 0 else np.zeros(x.shape, bool)
    kept = np.where(outliers, 0.0, x)
    absmax = np.abs(kept).max(axis=1)
    # torch evaluates the scalar-over-tensor ``127.0 / row_stats`` as reciprocal, then multiply.
    factor = (np.float32(1.0) / absmax.astype(np.float32)) * np.float32(127.0)
    q = np.rint((kept.astype(np.float32) * factor[:, None]).astype(np.float64)).astype(np.int8)
    cols = outliers.any(axis=0)
    if x.shape[0] > 1:
        q[:, cols] = 0
    return q, absmax, cols


def bnb_linear_ref(x, CB, SCB, bias, threshold):
    """float64 value of bitsandbytes' eval-mode int8 linear (its quantization of an fp16 copy of
    x, its scales; the outlier columns of x itself)."""
    x = np.asarray(x, np.float64)
    x16 = torch.from_numpy(x).to(torch.float16).double().numpy()
    q, absmax, cols = bnb_quantize_ref(x16, threshold)
    W = CB.astype(np.float64) * SCB[:, None] / 127.0
    inner = (q.astype(np.float64) @ CB.astype(np.float64).T) * absmax[:, None] * SCB[None, :]
    out = inner * BNB_INV127SQ + x[:, cols] @ W[:, cols].T
    return out if bias is None else out + bias, np.abs(inner) * BNB_INV127SQ, cols


def bnb_linear_bound(x, CB, SCB, bias, threshold, dtype) -> np.ndarray:
    """|bitsandbytes - bnb_linear_ref|: float32 dequantization (a few roundings), the int8 part
    + bias rounded to ``dtype``, each outlier weight rounded to ``dtype``, ``addmm`` accumulating
    in float32 and rounding once to ``dtype``."""
    u, u32 = UNIT[dtype], 2.0**-24
    ref, inner, cols = bnb_linear_ref(x, CB, SCB, bias, threshold)
    W = np.abs(CB.astype(np.float64) * SCB[:, None] / 127.0)
    s_out = np.abs(x[:, cols]) @ W[:, cols].T
    b = 0.0 if bias is None else np.abs(bias)[None, :]
    count = int(cols.sum())
    return (count + 6) * u32 * (inner + s_out) + 2 * u * (inner + b + s_out) + u * np.abs(ref)


def make_layer(mod, fp: torch.nn.Linear, threshold: float):
    """``fp``'s weights in ``mod``.Linear8bitLt (bitsandbytes.nn or lt8.nn), quantized on the CPU."""
    m = mod.Linear8bitLt(
        fp.in_features, fp.out_features, True, has_fp16_weights=False, threshold=threshold
    )
    m.weight = mod.Int8Params(fp.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    m.bias = torch.nn.Parameter(fp.bias.data.clone())
    return m.to("cpu")


def empty_layer(mod, K: int, N: int, threshold: float):
    """A quantized-but-unfilled layer (both libraries load int8 checkpoints after the move)."""
    return mod.Linear8bitLt(K, N, True, has_fp16_weights=False, threshold=threshold).to("cpu")


def activations(rng, M, K, threshold, dtype):
    """N(0,1) rows (none all-zero) and, for threshold > 0, two outlier columns whose other
    entries are 0 (so both libraries' row absmax agree), one entry exactly at the threshold."""
    x = np.clip(rng.standard_normal((M, K)), -3, 3)
    if threshold > 0:
        x[:, [3, K // 2]] = 0.0
        x[1, 3], x[M - 1, K // 2] = threshold, -2.5 * threshold
    return torch.from_numpy(x.astype(np.float32)).to(dtype)


def check_pair(out_lt8, out_bnb, x, CB, SCB, bias, threshold, dtype):
    """Both outputs against their own float64 references, and against each other."""
    x64, cb, scb = t64(x), CB.cpu().numpy(), t64(SCB)
    b64 = None if bias is None else t64(bias)
    ref = linear_ref(x64, cb, scb, b64, threshold)
    q = torch.ops.lt8.quantize_rows(x, threshold)[0].numpy()
    bound_lt8 = linear_error_bound(x64, cb, scb, ref, UNIT[dtype], 0.0, threshold, q)
    ref_bnb = bnb_linear_ref(x64, cb, scb, b64, threshold)[0]
    bound_bnb = bnb_linear_bound(x64, cb, scb, b64, threshold, dtype)
    assert np.all(np.abs(t64(out_lt8) - ref) <= bound_lt8), "lt8 vs its reference"
    assert np.all(np.abs(t64(out_bnb) - ref_bnb) <= bound_bnb), "bitsandbytes vs its reference"
    gap = np.abs(ref - ref_bnb)  # the two libraries' rules, evaluated exactly
    assert np.all(np.abs(t64(out_lt8) - t64(out_bnb)) <= gap + bound_lt8 + bound_bnb)
    # Not vacuous: the allowance stays far below the int8 error of either library.
    assert (gap + bound_lt8 + bound_bnb).max() < 0.02 * (np.abs(ref).max() + 1)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_bnb_state_dict_loads_into_lt8(rng, dtype, threshold):
    K, N = 96, 40
    fp = torch.nn.Linear(K, N).half()
    theirs = make_layer(bnb.nn, fp, threshold).eval()  # eval: bitsandbytes' int8 path
    sd = theirs.state_dict()
    assert sorted(sd) == ["SCB", "bias", "weight", "weight_format"]
    ours = empty_layer(lt8.nn, K, N, threshold)
    ours.load_state_dict(sd)
    assert torch.equal(ours.weight.data, theirs.weight.data)
    assert torch.equal(ours.weight.SCB, theirs.weight.SCB)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = activations(rng, 7, K, threshold, dtype)
    with torch.no_grad():
        out_ours, out_theirs = ours(x), theirs(x)
    assert out_ours.dtype == out_theirs.dtype == dtype
    check_pair(
        out_ours, out_theirs, x, ours.weight.data, ours.weight.SCB, ours.bias, threshold, dtype
    )


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_lt8_state_dict_loads_into_bnb(rng, dtype, threshold):
    K, N = 80, 48
    fp = torch.nn.Linear(K, N)
    ours = make_layer(lt8.nn, fp, threshold)
    theirs = empty_layer(bnb.nn, K, N, threshold).eval()
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(theirs.weight.data, ours.weight.data)
    assert torch.equal(theirs.weight.SCB, ours.weight.SCB)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = activations(rng, 6, K, threshold, dtype)
    with torch.no_grad():
        out_ours, out_theirs = ours(x), theirs(x)
    check_pair(
        out_ours, out_theirs, x, ours.weight.data, ours.weight.SCB, ours.bias, threshold, dtype
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["f16", "f32"])
def test_weight_only_paths_agree(rng, dtype):
    """bitsandbytes' CPU training-mode forward (dequantize, then a float matmul) and lt8's
    ``force_no_igemmlt`` are both x @ (CB * SCB / 127).T + bias (weight_linear_ref)."""
    K, N = 64, 32
    fp = torch.nn.Linear(K, N)
    theirs = make_layer(bnb.nn, fp, 6.0).train()
    ours = empty_layer(lt8.nn, K, N, 6.0)
    ours.load_state_dict(theirs.state_dict())
    ours.state.force_no_igemmlt = True
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = activations(rng, 5, K, 6.0, dtype)
    with torch.no_grad():
        out_ours, out_theirs = ours(x), theirs(x)
    x64, cb, scb, b64 = t64(x), ours.weight.data.numpy(), t64(ours.weight.SCB), t64(ours.bias)
    ref = weight_linear_ref(x64, cb, scb, b64)
    u = UNIT[dtype]
    S = np.abs(x64) @ np.abs(cb * scb[:, None] / 127.0).T
    assert np.all(np.abs(t64(out_ours) - ref) <= linear_error_bound(x64, cb, scb, ref, u))
    # bitsandbytes rounds the dequantized weight to x's dtype, then a float32-accumulated matmul.
    bound_theirs = u * S + (K + 4) * 2.0**-23 * S + 2 * u * (np.abs(ref) + u * S)
    assert np.all(np.abs(t64(out_theirs) - ref) <= bound_theirs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_quantizers_differ_exactly_where_their_formulas_do(dtype):
    """Both int8 quantizers against their formulas, bit for bit, on the rows that pin the
    rounding: lt8 equals the single-rounding reference, bitsandbytes its factor formula, and
    they differ exactly where the factor flips a tie."""
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    rows = tie_rows(name)
    # bitsandbytes divides by the absmax: no zero rows, nor tiny ones (its factor overflows).
    rows = rows[np.abs(rows).max(axis=1) > 1e-30]
    x = torch.from_numpy(rows).to(dtype)
    q_ours, s_ours, _ = lt8.functional.int8_vectorwise_quant(x, 0.0)
    q_theirs, s_theirs, _ = bnb.functional.int8_vectorwise_quant(x.clone(), 0.0)
    np.testing.assert_array_equal(q_ours.numpy(), quantize_rows_ref(rows)[0])
    np.testing.assert_array_equal(q_theirs.numpy(), bnb_quantize_ref(rows, 0.0)[0])
    assert torch.equal(s_ours, s_theirs)
    flips = bnb_quantize_ref(rows, 0.0)[0] != quantize_rows_ref(rows)[0]
    assert flips.sum() >= (10 if dtype == torch.float16 else 0)  # fp16's rows include flips
    np.testing.assert_array_equal(q_ours.numpy() != q_theirs.numpy(), flips)


def test_weights_quantize_identically_from_fp16(rng):
    """A fp16 weight: bitsandbytes (fp16 copy, factor formula) and lt8 (one rounding) give the
    same SCB and CB except at the ties the factor flips, which the emulations predict exactly."""
    fp = torch.nn.Linear(256, 64).half()
    ours, theirs = make_layer(lt8.nn, fp, 6.0), make_layer(bnb.nn, fp, 6.0)
    W = t64(fp.weight)
    assert torch.equal(ours.weight.SCB, theirs.weight.SCB)
    np.testing.assert_array_equal(ours.weight.data.numpy(), quantize_rows_ref(W)[0])
    np.testing.assert_array_equal(theirs.weight.data.numpy(), bnb_quantize_ref(W, 0.0)[0])

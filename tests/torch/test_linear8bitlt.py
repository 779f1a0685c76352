"""bitsandbytes' tests/test_linear8bitlt.py (the seed), ported to lt8 and run on every device.

The assertions are the seed's; ``.cuda()`` becomes ``.to(device)`` so the CPU runs them too.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from tempfile import TemporaryDirectory

import pytest
import torch

import lt8
from lt8 import functional as F
from lt8.autograd import get_inverse_transform_indices, undo_layout
from lt8.nn.modules import Linear8bitLt

TRUE_FALSE = (True, False)


def id_formatter(label: str):
    return lambda value: f"{label}={value}"


def _layout_exact_match(x: torch.Tensor, device: str) -> None:
    for tile_size, order in ((8, 32), "col_turing"), ((32, 32), "col_ampere"):
        transform = lambda t: F.transform(t.to(device), from_order="row", to_order=order)[0].to(
            t.device
        )  # noqa: E731
        tile_indices = get_inverse_transform_indices(transform, tile_size)
        cxb = transform(x)
        restored_x = undo_layout(cxb, tile_indices)
        assert restored_x.is_contiguous()
        assert torch.all(torch.eq(restored_x, x))


def test_layout_exact_match_cpu():
    # The seed's test at 1/16 of its size on the CPU.
    x = (torch.randn(14336 * 3 // 16, 14336 // 16) * 10).to(torch.int8)
    _layout_exact_match(x, "cpu")


@pytest.mark.cuda
@pytest.mark.slow
def test_layout_exact_match(device):
    if device != "cuda":
        pytest.skip(
            "the full-size (43008 x 14336) variant runs on CUDA; the CPU runs a smaller one"
        )
    x = (torch.randn(14336 * 3, 14336) * 10).to(torch.int8).cuda()
    _layout_exact_match(x, "cuda")


def test_linear_no_igemmlt(device):
    linear = torch.nn.Linear(1024, 3072)
    x = torch.randn(3, 1024, dtype=torch.half)
    linear_custom = Linear8bitLt(
        linear.in_features,
        linear.out_features,
        linear.bias is not None,
        has_fp16_weights=False,
        threshold=6.0,
    )
    linear_custom.state.force_no_igemmlt = True

    linear_custom.weight = lt8.nn.Int8Params(
        linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False
    ).to(linear.weight.dtype)
    linear_custom.bias = linear.bias
    linear_custom = linear_custom.to(device)
    linear = linear.half().to(device)

    x_ref = x.clone().to(device).requires_grad_(True)
    x_ours = x.clone().to(device).requires_grad_(True)
    fx_ref = linear(x_ref).float()
    grad_proj = torch.randn_like(fx_ref)
    (fx_ref * grad_proj).mean().backward()

    fx_ours = linear_custom(x_ours).float()
    (fx_ours * grad_proj).mean().backward()
    assert torch.allclose(fx_ref, fx_ours, atol=0.02)
    assert torch.allclose(x_ref.grad, x_ours.grad, atol=0.01)
    assert not linear_custom.state.has_fp16_weights
    assert linear_custom.state.CB is not None
    assert linear_custom.state.CxB is None


@pytest.mark.parametrize("has_fp16_weights", TRUE_FALSE, ids=id_formatter("has_fp16_weights"))
@pytest.mark.parametrize(
    "serialize_before_forward", TRUE_FALSE, ids=id_formatter("serialize_before_forward")
)
@pytest.mark.parametrize(
    "deserialize_before_cuda", TRUE_FALSE, ids=id_formatter("deserialize_before_cuda")
)
@pytest.mark.parametrize("force_no_igemmlt", TRUE_FALSE, ids=id_formatter("force_no_igemmlt"))
def test_linear_serialization(
    device, has_fp16_weights, serialize_before_forward, deserialize_before_cuda, force_no_igemmlt
):
    linear = torch.nn.Linear(32, 96)
    x = torch.randn(3, 32, dtype=torch.half)

    linear_custom = Linear8bitLt(
        linear.in_features,
        linear.out_features,
        linear.bias is not None,
        has_fp16_weights=has_fp16_weights,
        threshold=6.0,
    )
    if force_no_igemmlt:
        linear_custom.state.force_no_igemmlt = True

    linear_custom.weight = lt8.nn.Int8Params(
        linear.weight.data.clone(),
        requires_grad=has_fp16_weights,
        has_fp16_weights=has_fp16_weights,
    )
    linear_custom.bias = linear.bias
    linear_custom = linear_custom.to(device)

    if serialize_before_forward:
        state_dict_8bit = linear_custom.state_dict()

    x_first = x.clone().to(device).requires_grad_(True)
    fx_first = linear_custom(x_first).float()
    grad_proj = torch.randn_like(fx_first)
    (fx_first * grad_proj).mean().backward()

    if not serialize_before_forward:
        state_dict_8bit = linear_custom.state_dict()

    with TemporaryDirectory() as tmpdir:
        state_path_8bit = os.path.join(tmpdir, "state_8bit.pth")
        state_path = os.path.join(tmpdir, "state.pth")

        torch.save(linear.state_dict(), state_path)
        torch.save(state_dict_8bit, state_path_8bit)

        if not has_fp16_weights:
            assert os.path.getsize(state_path_8bit) < 0.5 * os.path.getsize(state_path)

        new_state_dict = torch.load(state_path_8bit)

    new_linear_custom = Linear8bitLt(
        linear.in_features,
        linear.out_features,
        linear.bias is not None,
        has_fp16_weights=has_fp16_weights,
        threshold=6.0,
    )
    if force_no_igemmlt:
        new_linear_custom.state.force_no_igemmlt = True

    if deserialize_before_cuda:
        with nullcontext() if has_fp16_weights else pytest.raises(RuntimeError):
            new_linear_custom.load_state_dict(new_state_dict, strict=True)

    new_linear_custom = new_linear_custom.to(device)

    if not deserialize_before_cuda:
        new_linear_custom.load_state_dict(new_state_dict, strict=True)

    x_second = x.clone().to(device).requires_grad_(True)
    fx_second = new_linear_custom(x_second).float()
    (fx_second * grad_proj).mean().backward()

    if has_fp16_weights or not deserialize_before_cuda:
        assert torch.allclose(fx_first, fx_second, atol=1e-5)
        assert torch.allclose(x_first.grad, x_second.grad, atol=1e-5)


# --- force_no_igemmlt against the float64 reference (not in the seed) ------------------------


def _no_igemmlt_case(device, dtype, has_fp16_weights, threshold, force):
    """A layer, its input and the reference inputs: x with a column at the threshold and
    values that int8 cannot hold exactly, so the two paths' numerics are far apart."""
    import numpy as np
    from reference import quantize_rows_ref

    rng = np.random.default_rng(1234)
    W = (rng.standard_normal((24, 80)) * 0.05).astype(np.float32)
    layer = Linear8bitLt(80, 24, bias=True, has_fp16_weights=has_fp16_weights, threshold=threshold)
    layer.weight = lt8.nn.Int8Params(
        torch.from_numpy(W), requires_grad=has_fp16_weights, has_fp16_weights=has_fp16_weights
    )
    layer.bias = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(24).astype(np.float32)))
    layer.state.force_no_igemmlt = force
    layer = layer.to(device)
    x = torch.from_numpy(rng.standard_normal((5, 80)).astype(np.float32) * 1.7).to(dtype)
    x[2, 7] = 6.0
    CB, SCB, _ = quantize_rows_ref(W)
    return layer, x.to(device), CB, SCB, layer.bias.detach().cpu().double().numpy()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("has_fp16_weights", TRUE_FALSE, ids=id_formatter("has_fp16_weights"))
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_force_no_igemmlt_selects_the_weight_only_numerics(
    device, dtype, has_fp16_weights, threshold
):
    """docs/NUMERICS.md: with state.force_no_igemmlt the layer is x @ (CB * SCB / 127).T + bias
    in float (weight_linear_ref, x not quantized); without it, LLM.int8() (linear_ref). Each
    path is within its own float32 bound and outside the other's."""
    import numpy as np
    from reference import linear_error_bound, linear_ref, weight_linear_ref

    eps = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}[dtype] / 2
    outs = {}
    for force in (True, False):
        layer, x, CB, SCB, bias = _no_igemmlt_case(
            device, dtype, has_fp16_weights, threshold, force
        )
        with torch.no_grad():
            outs[force] = layer(x).cpu().double().numpy()
    x64 = x.cpu().double().numpy()
    ref_w = weight_linear_ref(x64, CB, SCB, bias)
    ref_i8 = linear_ref(x64, CB, SCB, bias, threshold)
    q = torch.ops.lt8.quantize_rows(x, threshold)[0].cpu().numpy()
    bound_w = linear_error_bound(x64, CB, SCB, ref_w, eps)
    bound_i8 = linear_error_bound(x64, CB, SCB, ref_i8, eps, 0.0, threshold, q)
    assert np.all(np.abs(outs[True] - ref_w) <= bound_w), "force_no_igemmlt: weight-only path"
    assert np.all(np.abs(outs[False] - ref_i8) <= bound_i8), "default: the int8 path"
    # The two references are far apart here, so neither path passes for the other.
    assert not np.all(np.abs(outs[True] - ref_i8) <= bound_i8)
    assert not np.all(np.abs(outs[False] - ref_w) <= bound_w)

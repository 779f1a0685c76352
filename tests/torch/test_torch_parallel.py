"""Tensor-parallel Linear8bitLt over torch.distributed, and lt8 on more than one GPU.

The tensor-parallel checks run in 2 and 4 processes spawned here (gloo on the CPU; NCCL on two
GPUs when present). Every rank builds the same unsharded, quantized ``Linear8bitLt`` and the
same inputs from one seed, runs its shard, and compares with the unsharded layer computed in
the same process: bit for bit where lt8.torch.parallel promises it, else within float32
rounding bounds and against the float64 reference. A failure in any rank fails the test with
that rank's traceback (and the check's name and seed).

The multi-GPU tests (``cuda:1``, a model split across two GPUs, NCCL) skip on machines with
fewer than two GPUs.
"""

from __future__ import annotations

import copy
import datetime

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SEED, require_cuda
from reference import grad_input_ref, linear_error_bound, linear_ref, quantize_rows_ref

import lt8.torch  # noqa: F401
from lt8.torch import Linear8bitLt
from lt8.torch.parallel import (
    ColumnParallelLinear8bitLt,
    RowParallelLinear8bitLt,
    shard_linear8bit,
    shard_model,
)

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
K, N, THRESHOLD = 96, 40, 6.0  # K and N divisible by 2 and 4


# --- inputs -------------------------------------------------------------------------------------


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def quantized_layer(rng, in_f, out_f, threshold, device, bias=True) -> Linear8bitLt:
    layer = Linear8bitLt(in_f, out_f, bias=bias, has_fp16_weights=False, threshold=threshold)
    w = torch.from_numpy(rng.standard_normal((out_f, in_f)).astype(np.float32) * 0.05)
    layer.weight = lt8.torch.Int8Params(w, requires_grad=False)
    if bias:
        layer.bias = torch.nn.Parameter(
            torch.from_numpy(rng.standard_normal(out_f).astype(np.float32))
        )
    return layer.to(device)  # quantizes


def activations(rng, shape, world, dtype, device, threshold=THRESHOLD) -> torch.Tensor:
    """N(0,1) below 0.9 * threshold, plus an outlier entry in one column of every rank's slice
    of the features (so that the row-parallel layer adds outlier terms on every rank)."""
    x = np.clip(rng.standard_normal(shape), -0.9 * threshold, 0.9 * threshold).astype(np.float32)
    flat, k = x.reshape(-1, shape[-1]), shape[-1] // world
    for r in range(world):
        col = r * k + rng.integers(k)
        flat[rng.integers(flat.shape[0]), col] = rng.choice([-1.0, 1.0]) * rng.uniform(
            threshold, 3 * threshold
        )
    return torch.from_numpy(x).to(device=device, dtype=dtype)


def loss_weights(rng, shape, device) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(device)


def grads(module, x, R):
    """Output, input gradient and bias gradient of ``sum(module(x) * R)``."""
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    (y.float() * R).sum().backward()
    return y.detach(), x.grad, None if module.bias is None else module.bias.grad


def dequantized(CB: torch.Tensor, SCB: torch.Tensor) -> np.ndarray:
    return CB.cpu().numpy().astype(np.float64) * f64(SCB)[:, None] / 127


def float32_bound(a, B, n_terms: int, bias=None) -> np.ndarray:
    """``n_terms`` float32 roundings of the summed magnitudes of the terms of ``a @ B`` (+ bias):
    a bound on how far two float32 evaluations of it, in any order, can drift apart."""
    a = f64(a)
    S = np.abs(a.reshape(-1, a.shape[-1])) @ np.abs(B)
    if bias is not None:
        S = S + np.abs(f64(bias))
    return (n_terms * 2.0**-24 * S).reshape(*a.shape[:-1], B.shape[1])


def assert_close_rounding(a, b, dtype, slack):
    """|a - b| within ``slack`` (float32 differences) plus one rounding of each to ``dtype``."""
    a, b = f64(a), f64(b)
    tol = slack + 2 * UNIT_ROUNDOFF[dtype] * (np.abs(b) + slack)
    assert np.all(np.abs(a - b) <= tol), (
        f"max |diff| {np.abs(a - b).max()}, max excess {(np.abs(a - b) - tol).max()}"
    )


# --- the checks each rank runs --------------------------------------------------------------------


def check_column_parallel(rng, device, rank, world):
    for name, dtype in DTYPES.items():
        for threshold in (0.0, THRESHOLD):
            layer = quantized_layer(rng, K, N, threshold, device)
            x = activations(rng, (3, 5, K), world, dtype, device)
            R = loss_weights(rng, (3, 5, N), device)
            y_ref, gx_ref, gb_ref = grads(layer, x, R)
            n = N // world
            own = slice(rank * n, (rank + 1) * n)
            for gather in (True, False):
                tp = shard_linear8bit(layer, style="column", gather_output=gather)
                assert isinstance(tp, ColumnParallelLinear8bitLt)
                y, gx, gb = grads(tp, x, R if gather else R[..., own])
                case = f"{name} threshold={threshold} gather={gather}"
                assert torch.equal(y, y_ref if gather else y_ref[..., own]), case
                # grad_x: float32 partials summed over the ranks, one rounding to x's dtype.
                W = dequantized(layer.weight.data, layer.weight.SCB)
                ref = torch.from_numpy(
                    grad_input_ref(
                        f64(R.to(dtype)), layer.weight.data.cpu().numpy(), f64(layer.weight.SCB)
                    )
                )
                slack = float32_bound(R.to(dtype), W, N + world + 4)
                for g in (gx, gx_ref):
                    assert_close_rounding(g, ref, dtype, slack)
                assert gx.dtype == dtype and gx.shape == x.shape
                # grad_bias: the same float32 column sums of this rank's output gradient.
                g_abs = np.abs(f64(R[..., own].to(dtype))).reshape(-1, n).sum(0)
                assert np.all(np.abs(f64(gb) - f64(gb_ref[own])) <= 20 * 2.0**-24 * g_abs), case


def check_row_parallel(rng, device, rank, world):
    k = K // world
    own = slice(rank * k, (rank + 1) * k)
    for name, dtype in DTYPES.items():
        for threshold in (0.0, THRESHOLD):
            layer = quantized_layer(rng, K, N, threshold, device)
            x = activations(rng, (4, 3, K), world, dtype, device)
            R = loss_weights(rng, (4, 3, N), device)
            y_ref, gx_ref, gb_ref = grads(layer, x, R)
            CB, SCB, bias = layer.weight.data, layer.weight.SCB, layer.bias
            for parallel_input in (True, False):
                tp = shard_linear8bit(layer, style="row", input_is_parallel=parallel_input)
                assert isinstance(tp, RowParallelLinear8bitLt) and torch.equal(tp.CB, CB[:, own])
                y, gx, gb = grads(tp, x[..., own] if parallel_input else x, R)
                case = f"{name} threshold={threshold} input_is_parallel={parallel_input}"
                if threshold == 0.0:
                    assert torch.equal(y, y_ref), case  # int32 partial products summed: exact
                else:
                    n_outlier_cols = int(quantize_rows_ref(f64(x), threshold)[2].sum())
                    assert n_outlier_cols >= world, "every rank's slice must hold an outlier column"
                    slack = float32_bound(
                        x, dequantized(CB, SCB).T, n_outlier_cols + world + 4, bias
                    )
                    assert_close_rounding(y, y_ref, dtype, slack)
                    # ... and it is LLM.int8() of the whole x in float64 (same int8 values).
                    q, _, _ = torch.ops.lt8.quantize_rows(x, threshold)
                    ref = linear_ref(f64(x), CB.cpu().numpy(), f64(SCB), f64(bias), threshold)
                    bound = linear_error_bound(
                        f64(x),
                        CB.cpu().numpy(),
                        f64(SCB),
                        ref,
                        UNIT_ROUNDOFF[dtype],
                        threshold=threshold,
                        q=q.cpu().numpy(),
                    )
                    assert np.all(np.abs(f64(y) - ref) <= bound + slack), case
                # Each input feature's gradient is the unsharded kernel's sum: bit-identical.
                assert torch.equal(gx, gx_ref[..., own] if parallel_input else gx_ref), case
                assert torch.equal(gb, gb_ref), case


def check_nonfinite_rows(rng, device, rank, world):
    """A NaN in one rank's slice makes that row NaN on every rank, as in the unsharded layer
    (NaN must survive the MAX all-reduce, which gloo's does not guarantee)."""
    for threshold in (0.0, THRESHOLD):
        layer = quantized_layer(rng, K, N, threshold, device)
        x = activations(rng, (6, K), world, torch.float32, device)
        x[2, (K // world) * (world - 1)] = torch.nan  # in the last rank's slice
        x[4, 0] = torch.inf  # an outlier column when threshold > 0
        with torch.no_grad():
            y_ref = layer(x)
            y = shard_linear8bit(layer, style="row")(x)
        assert torch.equal(torch.isnan(y), torch.isnan(y_ref)) and torch.isnan(y[2]).all()
        finite = ~torch.isnan(y_ref).any(-1)
        if threshold == 0.0:
            assert torch.equal(y[finite], y_ref[finite])
        else:
            np.testing.assert_allclose(f64(y[finite]), f64(y_ref[finite]), rtol=1e-5, atol=1e-5)


class MLP(torch.nn.Module):
    def __init__(self, rng, threshold, device):
        super().__init__()
        self.up = quantized_layer(rng, K, 2 * N, threshold, device)
        self.down = quantized_layer(rng, 2 * N, N, threshold, device)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def check_sharded_mlp(rng, device, rank, world):
    """shard_model: column then row (Megatron's MLP), ReLU in between on the split features,
    after model.half() (which must leave the float32 scales alone)."""
    for threshold in (0.0, THRESHOLD):
        state = rng.bit_generator.state
        model = torch.nn.Sequential(MLP(rng, threshold, device)).half()
        rng.bit_generator.state = state
        sharded = shard_model(
            torch.nn.Sequential(MLP(rng, threshold, device)), {"up": "column", "0.down": "row"}
        )
        sharded = sharded.half()
        up, down = sharded[0].up, sharded[0].down
        assert isinstance(up, ColumnParallelLinear8bitLt) and not up.gather_output
        assert isinstance(down, RowParallelLinear8bitLt) and down.input_is_parallel
        assert up.SCB.dtype == down.SCB.dtype == torch.float32 and up.bias.dtype == torch.float16
        # Each rank keeps only its slice of the int8 weight (no view of the whole layer).
        assert up.CB.untyped_storage().nbytes() == (2 * N // world) * K
        assert down.CB_padded.untyped_storage().nbytes() == N * (2 * N // world + 1)
        x = activations(rng, (5, K), world, torch.float16, device)
        R = loss_weights(rng, (5, N), device)
        outs = []
        for m in (model, sharded):
            xg = x.detach().requires_grad_(True)
            y = m(xg)
            (y.float() * R).sum().backward()
            outs.append((y.detach(), xg.grad))
        (y_ref, gx_ref), (y, gx) = outs
        if threshold == 0.0:
            assert torch.equal(y, y_ref)
        else:  # a hidden value can round differently in float16: compare at the output's scale
            np.testing.assert_allclose(
                f64(y), f64(y_ref), rtol=0, atol=4 * 2.0**-11 * np.abs(f64(y_ref)).max()
            )
        np.testing.assert_allclose(
            f64(gx), f64(gx_ref), rtol=0, atol=4 * 2.0**-11 * np.abs(f64(gx_ref)).max()
        )
    # Patterns name layers (whole name or last component), not the containers around them.
    for plan in ({"up_proj": "column"}, {"0": "column"}):
        with pytest.raises(ValueError, match="match no Linear8bitLt"):
            shard_model(torch.nn.Sequential(MLP(rng, 0.0, device)), plan)
    with pytest.raises(ValueError, match="must be one of"):
        shard_model(torch.nn.Sequential(MLP(rng, 0.0, device)), {"up": "diagonal"})
    with pytest.raises(ValueError, match="both column and row"):
        shard_model(torch.nn.Sequential(MLP(rng, 0.0, device)), {"up": "column", "0.u*": "row"})


def check_bad_arguments(rng, device, rank, world):
    layer = quantized_layer(rng, K, N, THRESHOLD, device)
    with pytest.raises(ValueError, match="divisible"):
        shard_linear8bit(quantized_layer(rng, K, N + 1, 0.0, device), style="column")
    with pytest.raises(ValueError, match="divisible"):
        shard_linear8bit(quantized_layer(rng, K + 1, N, 0.0, device), style="row")
    with pytest.raises(ValueError, match="style must be"):
        shard_linear8bit(layer, style="diagonal")
    with pytest.raises(ValueError, match="not quantized"):
        shard_linear8bit(Linear8bitLt(K, N, has_fp16_weights=False), style="column")
    with pytest.raises(ValueError, match="has_fp16_weights"):
        shard_linear8bit(Linear8bitLt(K, N, has_fp16_weights=True).to(device), style="row")
    with pytest.raises(TypeError, match="Linear8bitLt"):
        shard_linear8bit(torch.nn.Linear(K, N), style="row")
    col, row = (
        shard_linear8bit(layer, style="column"),
        shard_linear8bit(layer, style="row", input_is_parallel=True),
    )
    with pytest.raises(ValueError, match=f"{K} features"):
        col(torch.randn(2, K - 1, device=device))
    with pytest.raises(ValueError, match=f"{K // world} features"):
        row(torch.randn(2, K, device=device))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        row(torch.ones(2, K // world, dtype=torch.int32, device=device))


CHECKS = [
    check_column_parallel,
    check_row_parallel,
    check_nonfinite_rows,
    check_sharded_mlp,
    check_bad_arguments,
]


def _worker(rank: int, world: int, backend: str, init_method: str, seed: int) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        for i, check in enumerate(CHECKS):
            rng = np.random.default_rng([seed, world, i])  # the same on every rank
            torch.manual_seed(seed)
            try:
                check(rng, device, rank, world)
            except Exception as e:
                raise AssertionError(
                    f"{check.__name__} failed on rank {rank} of {world} ({backend}, "
                    f"LT8_SEED={seed}): {e}"
                ) from e
    finally:
        dist.destroy_process_group()


def spawn(world: int, backend: str, tmp_path) -> None:
    store = tmp_path / f"store-{backend}-{world}"
    mp.spawn(_worker, args=(world, backend, f"file://{store}", SEED), nprocs=world, join=True)


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 4])
def test_tensor_parallel_gloo(world, tmp_path):
    spawn(world, "gloo", tmp_path)


def test_needs_a_process_group(rng):
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    layer = quantized_layer(rng, K, N, 0.0, "cpu")
    with pytest.raises(RuntimeError, match="init_process_group"):
        shard_linear8bit(layer, style="column")


def require_two_gpus() -> None:
    require_cuda()
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")


@pytest.mark.cuda
def test_tensor_parallel_nccl(tmp_path):
    require_two_gpus()
    if not dist.is_nccl_available():
        pytest.skip("torch has no NCCL")
    spawn(2, "nccl", tmp_path)


def _every_op(x, CB, SCB, bias, g) -> list:
    ops = torch.ops.lt8
    q, rs, mask = ops.quantize_rows(x, THRESHOLD)
    acc = ops.int8_gemm(q, CB)
    return [
        q,
        rs,
        mask,
        acc,
        ops.dequant_epilogue(acc, rs, SCB, bias),
        ops.int8_linear(x, CB, SCB, bias, 0.0),
        ops.int8_linear(x, CB, SCB, bias, THRESHOLD),
        ops.int8_weight_linear(x, CB, SCB, bias),
        ops.int8_linear_grad_input(g, CB, SCB),
        ops.transform_layout(CB, N, K, "row", "col32"),
    ]


@pytest.mark.cuda
def test_cuda1_matches_cpu(rng):
    """Every op on cuda:1 while cuda:0 is current, on cuda:1's default stream and on a side
    stream of cuda:1: the CPU's bits (int8_weight_linear: its rounding), on cuda:1, in stream
    order, and the current device is left alone."""
    require_two_gpus()
    dev = torch.device("cuda", 1)
    W = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    inputs = (
        activations(rng, (37, K), 4, torch.float16, "cpu"),
        CB,
        SCB,
        torch.from_numpy(rng.standard_normal(N).astype(np.float32)).half(),
        torch.from_numpy(rng.standard_normal((37, N)).astype(np.float32)).half(),
    )
    cpu = _every_op(*inputs)

    def check(gpu, how):
        for i, (a, b) in enumerate(zip(cpu, gpu)):
            assert b.device == dev, f"{how}: output {i} is on {b.device}"
            if i == 7:  # the weight-only product accumulates in float32 in another order
                np.testing.assert_allclose(f64(b), f64(a), rtol=2.0**-10, atol=1e-3, err_msg=how)
            else:
                assert torch.equal(a, b.cpu()), f"{how}: output {i} differs from the CPU's"

    torch.cuda.set_device(0)
    on1 = [t.to(dev) for t in inputs]
    check(_every_op(*on1), "cuda:1, default stream")
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):  # cuda:1 current, `side` its stream
        torch.cuda._sleep(50_000_000)  # a kernel on another stream would read unwritten inputs
        produced = [t.clone() for t in on1]
        with torch.cuda.device(0):  # cuda:0 current again; cuda:1's stream stays `side`
            assert torch.cuda.current_stream(dev) == side
            out = _every_op(*produced)
    side.synchronize()
    check(out, "cuda:1, side stream, cuda:0 current")
    assert torch.cuda.current_device() == 0
    # The module path: Int8Params quantizes on cuda:1; the eager fast path and autograd.
    layer = quantized_layer(rng, K, N, THRESHOLD, "cpu")
    x = inputs[0]
    with torch.no_grad():
        y_cpu = layer(x)
        layer1 = copy.deepcopy(layer).to(dev)
        assert layer1.weight.device == dev and layer1.weight.SCB.device == dev
        assert torch.equal(layer1(x.to(dev)).cpu(), y_cpu)
    fresh = Linear8bitLt(K, N, has_fp16_weights=False, threshold=THRESHOLD)
    fresh.weight = lt8.torch.Int8Params(W.clone(), requires_grad=False)
    fresh = fresh.to(dev)  # quantized on cuda:1 itself
    assert torch.equal(fresh.weight.data.cpu(), CB) and torch.equal(fresh.weight.SCB.cpu(), SCB)
    xg = x.to(dev).requires_grad_(True)
    layer1(xg).float().sum().backward()
    assert xg.grad.device == dev and torch.cuda.current_device() == 0


class _OnDevice(torch.nn.Module):
    """An accelerate-style device-map hook: moves the input to the wrapped module's device."""

    def __init__(self, module: torch.nn.Module, device):
        super().__init__()
        self.module, self.device = module.to(device), torch.device(device)

    def forward(self, x):
        return self.module(x.to(self.device))


@pytest.mark.cuda
def test_model_split_across_two_gpus(rng):
    """Four int8 layers with ReLU, two on cuda:0 and two on cuda:1: the CPU model's bits,
    forward and backward (the CUDA kernels round as the CPU ones; ReLU is exact)."""
    require_two_gpus()

    def blocks():
        local = np.random.default_rng([SEED, 7])
        return [
            torch.nn.Sequential(quantized_layer(local, K, K, THRESHOLD, "cpu"), torch.nn.ReLU())
            for _ in range(4)
        ]

    cpu_model = torch.nn.Sequential(*blocks())
    split = torch.nn.Sequential(*[_OnDevice(b, f"cuda:{i // 2}") for i, b in enumerate(blocks())])
    assert {p.device.index for p in split.parameters()} == {0, 1}
    x = activations(rng, (9, K), 2, torch.float16, "cpu")
    outs = []
    for model, dev in ((cpu_model, "cpu"), (split, "cuda:0")):
        xg = x.to(dev).requires_grad_(True)
        y = model(xg)
        y.float().square().sum().backward()
        outs.append((y.detach().cpu(), xg.grad.cpu()))
    assert split(x.to("cuda:0")).device == torch.device("cuda", 1)
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])

"""Tensor parallelism for Linear8bitLt through PyTorch's DTensor engine, and lt8 on two GPUs.

The tensor-parallel checks run in 2 and 4 processes spawned here (gloo on the CPU; NCCL on two
GPUs when present). Every rank builds the same unsharded, quantized ``Linear8bitLt`` and the
same inputs from one seed, shards a copy with ``torch.distributed.tensor.parallel.
parallelize_module`` and torch's own ``ColwiseParallel`` / ``RowwiseParallel``, and
compares with the unsharded layer computed in the same process: bit for bit where
lt8.torch.tensor_parallel promises it, else within float32 rounding bounds and against the
float64 reference. A failure in any rank fails the test with that rank's traceback (and the
check's name and seed).

The multi-GPU tests (``cuda:1``, a model split across two GPUs, NCCL) skip on machines with
fewer than two GPUs; under LT8_REQUIRE_CUDA=1 they fail unless LT8_GPUS says the machine has
fewer (conftest.require_gpus).
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
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import lt8.torch  # noqa: F401
from lt8.torch import Linear8bitLt
from lt8.torch.parallel import shard_model

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


def local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def grads(module, x, R):
    """Output, input gradient and bias gradient (this rank's part) of ``sum(module(x) * R)``."""
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    (y.float() * R).sum().backward()
    return y.detach(), x.grad, None if module.bias is None else local(module.bias.grad)


def sharded(layer, mesh, style):
    """A copy of ``layer`` sharded with ``parallelize_module`` (the layer itself stays whole)."""
    tp = copy.deepcopy(layer)
    out = parallelize_module(tp, mesh, style)
    assert out is tp and type(tp) is Linear8bitLt  # no wrapper: the same module, sharded
    return tp


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


def check_column_parallel(rng, device, mesh, rank, world):
    n = N // world
    own = slice(rank * n, (rank + 1) * n)
    for name, dtype in DTYPES.items():
        for threshold in (0.0, THRESHOLD):
            layer = quantized_layer(rng, K, N, threshold, device)
            x = activations(rng, (3, 5, K), world, dtype, device)
            R = loss_weights(rng, (3, 5, N), device)
            y_ref, gx_ref, gb_ref = grads(layer, x, R)
            for gather in (True, False):
                style = ColwiseParallel(output_layouts=Replicate() if gather else Shard(-1))
                tp = sharded(layer, mesh, style)
                w = tp.weight
                assert isinstance(w, DTensor) and w.placements == (Shard(0),)
                assert w.shape == layer.weight.shape and w.SCB.placements == (Shard(0),)
                assert torch.equal(w.to_local(), layer.weight.data[own])
                assert torch.equal(w.SCB.to_local(), layer.weight.SCB[own])
                assert torch.equal(w.full_tensor(), layer.weight.data)
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


def check_row_parallel(rng, device, mesh, rank, world):
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
                style = RowwiseParallel(input_layouts=None if parallel_input else Replicate())
                tp = sharded(layer, mesh, style)
                assert tp.weight.placements == (Shard(1),)
                assert torch.equal(tp.weight.to_local(), CB[:, own])
                assert tp.weight.to_local().stride() == (k + 16, 1)  # a view of the padded buffer
                assert torch.equal(tp.weight.full_tensor(), CB)  # a consistent DTensor
                assert torch.equal(tp.weight.SCB.to_local(), SCB)
                y, gx, gb = grads(tp, x[..., own] if parallel_input else x, R)
                case = f"{name} threshold={threshold} parallel input={parallel_input}"
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


def check_row_parallel_many_outliers(rng, device, mesh, rank, world):
    """A prefill-sized shard (more rows than the decode GEMV's 16) with most columns outliers:
    the row-parallel layer runs the fused op's pieces, and on a GPU with 16-bit x the outlier
    terms of a shard with more than 64 outlier columns are summed on tensor cores. Either way:
    the unsharded layer's result up to float32 sums in any order, and LLM.int8() of the whole x."""
    K2 = 320  # 160 columns per rank at world 2 (most of them outliers: > 64), 80 at world 4
    k = K2 // world
    own = slice(rank * k, (rank + 1) * k)
    for name, dtype in DTYPES.items():
        layer = quantized_layer(rng, K2, N, THRESHOLD, device)
        x = activations(rng, (24, K2), world, dtype, device)
        cols = rng.random(K2) < 0.75  # outlier columns: one entry above the threshold each
        rows = torch.from_numpy(rng.integers(24, size=int(cols.sum()))).to(device)
        x[rows, torch.from_numpy(np.flatnonzero(cols)).to(device)] = 2.0 * THRESHOLD
        CB, SCB, bias = layer.weight.data, layer.weight.SCB, layer.bias
        with torch.no_grad():
            y_ref = layer(x)
            y = sharded(layer, mesh, RowwiseParallel())(x[..., own])
        n_outlier_cols = int(quantize_rows_ref(f64(x), THRESHOLD)[2].sum())
        slack = float32_bound(x, dequantized(CB, SCB).T, n_outlier_cols + world + 4, bias)
        assert_close_rounding(y, y_ref, dtype, slack)
        q, _, _ = torch.ops.lt8.quantize_rows(x, THRESHOLD)
        ref = linear_ref(f64(x), CB.cpu().numpy(), f64(SCB), f64(bias), THRESHOLD)
        bound = linear_error_bound(
            f64(x), CB.cpu().numpy(), f64(SCB), ref, UNIT_ROUNDOFF[dtype], threshold=THRESHOLD,
            q=q.cpu().numpy(),
        )  # fmt: skip
        assert np.all(np.abs(f64(y) - ref) <= bound + slack), name


def check_nonfinite_rows(rng, device, mesh, rank, world):
    """A NaN in one rank's slice makes that row NaN on every rank, as in the unsharded layer
    (NaN must survive the MAX all-reduce, which gloo's does not guarantee)."""
    for threshold in (0.0, THRESHOLD):
        layer = quantized_layer(rng, K, N, threshold, device)
        x = activations(rng, (6, K), world, torch.float32, device)
        x[2, (K // world) * (world - 1)] = torch.nan  # in the last rank's slice
        x[4, 0] = torch.inf  # an outlier column when threshold > 0
        tp = sharded(layer, mesh, RowwiseParallel(input_layouts=Replicate()))
        with torch.no_grad():
            y_ref, y = layer(x), tp(x)
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
        self.head = torch.nn.Linear(N, 2 * N, device=device)  # float, colwise like torch's

    def forward(self, x):
        return self.head(self.down(torch.relu(self.up(x))))


def check_sharded_mlp(rng, device, mesh, rank, world):
    """parallelize_module on a model (no wrapper): column then row (Megatron's MLP), ReLU in
    between on the split features, a float Linear in the same plan, in float16; and the same
    through shard_model's plan."""
    for threshold in (0.0, THRESHOLD):
        model = MLP(rng, threshold, device).half()
        plan = {
            "up": ColwiseParallel(),
            "down": RowwiseParallel(),
            "head": ColwiseParallel(output_layouts=Replicate()),
        }
        tp = parallelize_module(copy.deepcopy(model), mesh, plan)
        via_plan = shard_model(
            torch.nn.Sequential(copy.deepcopy(model)), {"up": "column", "0.down": "row"}, mesh
        )
        assert type(tp) is MLP and type(tp.up) is Linear8bitLt and type(tp.head) is torch.nn.Linear
        assert isinstance(tp.head.weight, DTensor) and tp.head.weight.placements == (Shard(0),)
        up, down = tp.up, tp.down
        assert up.weight.SCB.dtype == down.weight.SCB.dtype == torch.float32
        assert up.bias.dtype == torch.float16
        # Each rank keeps only its slice of the int8 weight (the row layer's in a buffer one
        # zero column wider, which its kernel call uses without a copy).
        assert up.weight.to_local().untyped_storage().nbytes() == (2 * N // world) * K
        assert down.weight.to_local().untyped_storage().nbytes() == N * (2 * N // world + 16)
        x = activations(rng, (5, K), world, torch.float16, device)
        R = loss_weights(rng, (5, 2 * N), device)
        outs = []
        for m in (model, tp):
            xg = x.detach().requires_grad_(True)
            y = m(xg)
            (y.float() * R).sum().backward()
            outs.append((y.detach(), xg.grad))
        (y_ref, gx_ref), (y, gx) = outs
        with torch.no_grad():
            inner_ref, inner = (
                model.down(torch.relu(model.up(x))),
                via_plan[0].down(torch.relu(via_plan[0].up(x))),
            )
        if threshold == 0.0:
            assert torch.equal(inner, inner_ref)  # column exact, row int32 sums exact
        # A hidden value can round differently in float16 (row sums with outliers, the float
        # head's own sharded sums): compare at the output's scale.
        for a, b in ((y, y_ref), (inner, inner_ref)):
            np.testing.assert_allclose(
                f64(a), f64(b), rtol=0, atol=4 * 2.0**-11 * np.abs(f64(b)).max()
            )
        np.testing.assert_allclose(
            f64(gx), f64(gx_ref), rtol=0, atol=4 * 2.0**-11 * np.abs(f64(gx_ref)).max()
        )
    # shard_model's patterns name layers (whole name or last component), not containers.
    for plan in ({"up_proj": "column"}, {"0": "column"}):
        with pytest.raises(ValueError, match="match no Linear8bitLt"):
            shard_model(torch.nn.Sequential(MLP(rng, 0.0, device)), plan, mesh)
    with pytest.raises(ValueError, match="must be one of"):
        shard_model(torch.nn.Sequential(MLP(rng, 0.0, device)), {"up": "diagonal"}, mesh)
    with pytest.raises(ValueError, match="both column and row"):
        shard_model(
            torch.nn.Sequential(MLP(rng, 0.0, device)), {"up": "column", "0.u*": "row"}, mesh
        )


def check_compiled_sharded_mlp(rng, device, mesh, rank, world):
    """A tensor-parallel int8 MLP compiles whole (torch.compile(fullgraph=True): DTensor, lt8's
    shard forwards and their collectives trace without a graph break) and gives the eager
    sharded model's bits: eager DTensor costs more host time per layer than a GPU layer takes
    (benchmarks/NOTES.md v6), so compiled or graph-captured is how tensor parallelism is run.
    Prefill-sized (more than 16 rows) and decode-sized inputs take different row-layer paths.
    Two ranks only: four compiling processes on CI's two cores cost a minute for no new path."""
    if world > 2:
        return
    model = MLP(rng, THRESHOLD, device).half()
    tp = parallelize_module(
        model,
        mesh,
        {"up": ColwiseParallel(), "down": RowwiseParallel(), "head": ColwiseParallel()},
    )
    compiled = torch.compile(tp, fullgraph=True)
    with torch.no_grad():
        for rows in (24, 3):
            x = activations(rng, (rows, K), world, torch.float16, device)
            assert torch.equal(local(compiled(x)), local(tp(x))), f"{rows} rows"
    torch._dynamo.reset()


def check_bad_arguments(rng, device, mesh, rank, world):
    layer = quantized_layer(rng, K, N, THRESHOLD, device)
    if world > 1:  # one rank divides everything
        with pytest.raises(ValueError, match="divisible"):
            sharded(quantized_layer(rng, K, N + 1, 0.0, device), mesh, ColwiseParallel())
        with pytest.raises(ValueError, match="divisible"):
            sharded(quantized_layer(rng, K + 1, N, 0.0, device), mesh, RowwiseParallel())
    fresh = Linear8bitLt(K, N, has_fp16_weights=False)
    if torch.device(device).type == "cpu":
        with pytest.raises(ValueError, match="not quantized"):
            parallelize_module(fresh, mesh, ColwiseParallel())
        assert type(fresh.weight) is lt8.torch.Int8Params  # a failed shard leaves it as it was
    else:
        # On a GPU mesh torch's distribute_tensor first moves the weight to the GPU, which
        # quantizes a Linear8bitLt's weight as module.to(device) does: the layer then shards.
        parallelize_module(fresh, mesh, ColwiseParallel())
        assert isinstance(fresh.weight, DTensor) and fresh.weight.dtype == torch.int8
    with pytest.raises(ValueError, match="has_fp16_weights"):
        sharded(Linear8bitLt(K, N, has_fp16_weights=True).to(device), mesh, RowwiseParallel())
    col = sharded(layer, mesh, ColwiseParallel())
    row = sharded(layer, mesh, RowwiseParallel())
    with pytest.raises((RuntimeError, ValueError), match="once|sharded already"):
        parallelize_module(col, mesh, RowwiseParallel())
    with pytest.raises(ValueError, match=f"{K} features"):
        col(torch.randn(2, K - 1, device=device))
    with pytest.raises(ValueError, match=f"{K // world} features"):
        row(torch.randn(2, 2 * K, device=device))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        row(torch.ones(2, K // world, dtype=torch.int32, device=device))


CHECKS = [
    check_column_parallel,
    check_row_parallel,
    check_row_parallel_many_outliers,
    check_nonfinite_rows,
    check_sharded_mlp,
    check_compiled_sharded_mlp,
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
        mesh = DeviceMesh(device.type, list(range(world)))
        for i, check in enumerate(CHECKS):
            rng = np.random.default_rng([seed, world, i])  # the same on every rank
            torch.manual_seed(seed)
            try:
                check(rng, device, mesh, rank, world)
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


def test_shard_model_needs_a_process_group(rng):
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    model = torch.nn.Sequential(quantized_layer(rng, K, N, 0.0, "cpu"))
    with pytest.raises(RuntimeError, match="init_process_group"):
        shard_model(model, {"0": "column"})
    assert type(model[0].weight) is lt8.torch.Int8Params  # untouched


def require_two_gpus() -> None:
    from conftest import require_gpus

    require_gpus(2)  # fails under LT8_REQUIRE_CUDA=1 unless LT8_GPUS says fewer


@pytest.mark.cuda
def test_tensor_parallel_nccl_one_gpu(tmp_path):
    """The styles on a one-rank NCCL mesh: lt8's CUDA kernels under DTensor, the same checks."""
    require_cuda()
    if not dist.is_nccl_available():
        pytest.skip("torch has no NCCL")
    spawn(1, "nccl", tmp_path)


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
        # A fresh leaf each pass: x.to("cpu") is x itself, which must not become part of a graph.
        xg = x.detach().to(dev).requires_grad_(True)
        y = model(xg)
        y.float().square().sum().backward()
        outs.append((y.detach().cpu(), xg.grad.cpu()))
    assert split(x.to("cuda:0")).device == torch.device("cuda", 1)
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])

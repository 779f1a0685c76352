"""Tensor-parallel LLM.int8() linear layers over a ``torch.distributed`` process group.

Every rank of the group holds one contiguous slice of a quantized ``Linear8bitLt`` (rank ``r``
gets chunk ``r`` of ``size`` equal chunks) and runs lt8's kernels on it; the collectives run on
the group's backend (gloo on the CPU, NCCL on GPUs). Inputs, outputs and gradients are the same
on every rank unless said otherwise, as in Megatron-LM.

* :class:`ColumnParallelLinear8bitLt` splits the output features: ``CB`` rows, ``SCB`` and
  ``bias`` are sliced (row-wise quantization has one scale per output row, so the shard's int8
  weight *is* the unsharded one's rows). Every rank sees the whole ``x`` (same outlier columns,
  same row scales), so its output slice is **bit-identical** to the unsharded layer's; with
  ``gather_output=True`` an ``all_gather`` returns the whole output. Backward: each rank's
  input gradient is a partial sum over its output features, computed in float32,
  ``all_reduce``-summed in float32 and rounded once to x's dtype (equal to the unsharded
  gradient up to float32 summation order).
* :class:`RowParallelLinear8bitLt` splits the input features: ``CB`` columns are sliced, ``SCB``
  and ``bias`` stay whole (the int8 values are the unsharded ones). LLM.int8() quantizes each
  row of ``x`` by its absmax over the non-outlier columns; outlier columns are found per column,
  so each rank finds exactly its slice of them, but the absmax spans every rank: one
  ``all_reduce(MAX)`` of the local row absmax (M floats) makes every rank quantize its slice of
  ``x`` to exactly the unsharded int8 values. Then

  - ``threshold == 0`` (no outliers): the int32 products are ``all_reduce``-summed (exact) and
    dequantized once, with the bias: **bit-identical** to the unsharded layer.
  - ``threshold > 0``: each rank's fused kernel gives its float32 partial (int32 products
    dequantized, plus its own outlier columns' float terms); the partials are summed in
    float32 and the bias added once. The int8 part is the same; the float terms are added in
    another grouping than the unsharded kernel's single ascending sum, so results equal it up
    to float32 rounding (a few ulps of float32, rarely one ulp of float16/bfloat16 after the
    final rounding). Exactness here would mean gathering the outlier columns' terms in order.

  Backward needs no collective: ``grad_out`` is the same on every rank and each input feature's
  gradient is the unsharded kernel's sum over the output features (bit-identical), and with
  ``input_is_parallel=False`` the slices are ``all_gather``-ed into the whole ``grad_x``.

Why a padded weight: the fused kernel takes a row's scale from the data it is given. The
row-parallel layer appends one column to its slice of ``x`` holding the group's row absmax, and
one zero column to its ``CB`` slice (``CB_padded``, ``(out, in / size + 1)``), so the kernel
quantizes with the group's scale while that column adds nothing to the products.

Only layers quantized to int8 (``has_fp16_weights=False``, moved to their device) using the
LLM.int8() path (not ``force_no_igemmlt``) can be sharded. Gradients flow to the input and the
bias (adapter training on frozen int8 weights); the int8 weights never change.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from lt8.torch import _ops
from lt8.torch.nn import Linear8bitLt

__all__ = [
    "ColumnParallelLinear8bitLt",
    "RowParallelLinear8bitLt",
    "shard_linear8bit",
    "shard_model",
]

STYLES = ("column", "row")


# --- helpers ------------------------------------------------------------------------------------


def _group_rank_size(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "tensor-parallel lt8 layers need torch.distributed: call "
            "torch.distributed.init_process_group first"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _chunk(n: int, size: int, what: str) -> int:
    if n % size:
        raise ValueError(f"{what} = {n} must be divisible by the process group's size {size}")
    return n // size


def _int8_weight(layer: Linear8bitLt) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(layer, Linear8bitLt):
        raise TypeError(f"layer must be an lt8 Linear8bitLt, got {type(layer).__name__}")
    if layer.state.has_fp16_weights:
        raise ValueError(
            "layer keeps a float master weight (has_fp16_weights=True); only int8 "
            "layers (has_fp16_weights=False) can be sharded"
        )
    if layer.state.force_no_igemmlt:
        raise ValueError(
            "layer uses the weight-only path (state.force_no_igemmlt=True), which "
            "tensor-parallel lt8 layers do not implement"
        )
    w = layer.weight
    if w.dtype != torch.int8 or getattr(w, "SCB", None) is None:
        raise ValueError(
            "layer is not quantized yet: move it to its device first "
            "(layer.to(device); on the CPU layer.to('cpu')), then shard it"
        )
    return w.data, w.SCB


def _sum_rows(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _ops._sum_rows(g).to(dtype)


def _owned(t: torch.Tensor, device) -> torch.Tensor:
    """A copy of ``t`` on ``device`` (default: t's): a shard must not keep the whole layer's
    storage alive, nor share it."""
    return t.to(device=device, copy=True)


def _plan_matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name.rpartition(".")[2], pattern
    )


def _all_gather_last(t: torch.Tensor, group, size: int) -> torch.Tensor:
    """Every rank's ``t`` (same shape), concatenated along the last dimension in rank order."""
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(parts, t, group=group)
    return torch.cat(parts, dim=-1)


def _own_slice(t: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    n = t.shape[-1] // size
    return t[..., rank * n : (rank + 1) * n]


def _check_input(x: torch.Tensor, K: int, device: torch.device, layer: str) -> None:
    """Raised before any collective, so that a bad input fails on every rank instead of leaving
    the others waiting."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: x must be a tensor, got {type(x).__name__}")
    _ops.check_float(x, "x")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(
            f"{layer}: x must have {K} features in its last dimension, got shape {tuple(x.shape)}"
        )
    if x.device != device:
        raise ValueError(f"{layer}: x is on {x.device} but this rank's weights are on {device}")


# --- autograd functions -------------------------------------------------------------------------


class _ColumnParallel(torch.autograd.Function):
    """y_r = int8_linear(x, CB_r, SCB_r, bias_r) (optionally gathered); dx = sum_r dy_r @ W_r."""

    @staticmethod
    def forward(ctx, x, CB, SCB, bias, threshold, group, rank, size, gather):
        out = torch.ops.lt8.int8_linear(x, CB, SCB, bias, threshold)
        ctx.save_for_backward(CB, SCB)
        ctx.meta = (group, rank, size, gather, x.dtype, None if bias is None else bias.dtype)
        return _all_gather_last(out, group, size) if gather else out

    @staticmethod
    def backward(ctx, grad):
        CB, SCB = ctx.saved_tensors
        group, rank, size, gather, x_dtype, bias_dtype = ctx.meta
        if gather:  # the whole output's gradient is the same on every rank: keep this rank's part
            grad = _own_slice(grad, rank, size)
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # float32 partials summed in float32, then one rounding to x's dtype.
            partial = torch.ops.lt8.int8_linear_grad_input(grad.float(), CB, SCB)
            dist.all_reduce(partial, group=group)
            grad_x = partial.to(x_dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = _sum_rows(grad, bias_dtype)
        return grad_x, None, None, grad_bias, None, None, None, None, None


class _RowParallel(torch.autograd.Function):
    """y = sum_r LLM.int8()(x_r, CB_r) with the group's row scales, + bias (see the module doc)."""

    @staticmethod
    def forward(ctx, x_r, CB_padded, SCB, bias, threshold, group):
        # The row absmax over the non-outlier columns, across the group. MAX collectives may
        # drop NaN (gloo does), so NaN travels as inf; either makes the row all-NaN, as the
        # unsharded kernel does (the row quantizes to zeros, its scale is not finite).
        _, absmax, _ = torch.ops.lt8.quantize_rows(x_r, threshold)
        absmax = torch.where(torch.isnan(absmax), torch.inf, absmax)
        dist.all_reduce(absmax, op=dist.ReduceOp.MAX, group=group)
        # The extra column: the group's absmax (exact in x's dtype: it is |an element of x|).
        # It is below the threshold (only non-outlier values enter it), so it is never an
        # outlier column; a non-finite one goes in as NaN, which always wins the absmax.
        scale_col = torch.where(torch.isinf(absmax), torch.nan, absmax).unsqueeze(-1)
        if threshold == 0.0:
            x_ext = torch.cat([x_r, scale_col.to(x_r.dtype)], dim=-1)
            q, row_scale, _ = torch.ops.lt8.quantize_rows(x_ext, 0.0)
            acc = torch.ops.lt8.int8_gemm(q, CB_padded)
            dist.all_reduce(acc, group=group)  # int32: exact
            out = torch.ops.lt8.dequant_epilogue(acc, row_scale, SCB, bias, x_r.dtype)
        else:
            x_ext = torch.cat([x_r.float(), scale_col], dim=-1)
            partial = torch.ops.lt8.int8_linear(x_ext, CB_padded, SCB, None, threshold)
            dist.all_reduce(partial, group=group)
            if bias is not None:
                partial = partial + bias.float()
            out = partial.to(x_r.dtype)
        ctx.save_for_backward(CB_padded, SCB)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        CB_padded, SCB = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.lt8.int8_linear_grad_input(grad, CB_padded, SCB)[..., :-1]
        if ctx.needs_input_grad[3]:
            grad_bias = _sum_rows(grad, ctx.bias_dtype)
        return grad_x, None, None, grad_bias, None, None


class _ScatterLast(torch.autograd.Function):
    """Forward: this rank's slice of the last dimension; backward: every rank's slice gathered."""

    @staticmethod
    def forward(ctx, x, group, rank, size):
        ctx.meta = (group, size)
        return _own_slice(x, rank, size).contiguous()

    @staticmethod
    def backward(ctx, grad):
        group, size = ctx.meta
        return _all_gather_last(grad, group, size), None, None, None


# --- modules ------------------------------------------------------------------------------------


class _ParallelBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, threshold: float, group):
        super().__init__()
        self.rank, self.world_size = _group_rank_size(group)
        self.group = group
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.threshold = _ops.as_threshold(threshold)

    def _apply(self, fn, recurse=True):
        # Like Int8Params: module.half() / .to(dtype) must not round the float32 scales; only
        # their device follows.
        scb = self._buffers["SCB"]
        result = super()._apply(fn, recurse)
        moved = self._buffers["SCB"]
        if moved.dtype != torch.float32:
            self._buffers["SCB"] = scb.to(moved.device)
        return result

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, threshold={self.threshold}, "
            f"rank={self.rank}, world_size={self.world_size}"
        )


class ColumnParallelLinear8bitLt(_ParallelBase):
    """An int8 linear layer split over its output features (see the module doc).

    Holds this rank's ``CB`` (out / size, in) int8 and ``SCB`` (out / size,) float32 as buffers
    and its ``bias`` slice as a parameter. ``forward(x)`` takes the whole ``x`` (..., in) and
    returns (..., out) with ``gather_output=True``, else this rank's (..., out / size) slice.
    Build it with :meth:`from_linear8bit` (or :func:`shard_linear8bit`).
    """

    def __init__(
        self,
        CB: torch.Tensor,
        SCB: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        out_features: int,
        threshold: float = 0.0,
        group=None,
        gather_output: bool = True,
    ):
        super().__init__(in_features, out_features, threshold, group)
        n = _chunk(self.out_features, self.world_size, "out_features")
        _ops.check_weight(CB, SCB, bias, self.in_features)
        _ops.check_same_device(CB=CB, SCB=SCB, bias=bias)
        if CB.shape[0] != n:
            raise ValueError(
                f"CB must hold this rank's {n} of {self.out_features} output rows, got "
                f"shape {tuple(CB.shape)}"
            )
        self.gather_output = bool(gather_output)
        self.register_buffer("CB", CB.contiguous())
        self.register_buffer("SCB", SCB.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_linear8bit(
        cls,
        layer: Linear8bitLt,
        group=None,
        gather_output: bool = True,
        device: torch.device | str | None = None,
    ) -> ColumnParallelLinear8bitLt:
        """This rank's column shard of a quantized ``layer`` (whole on every rank), on
        ``device`` (default: the layer's)."""
        CB, SCB = _int8_weight(layer)
        rank, size = _group_rank_size(group)
        n = _chunk(layer.out_features, size, "out_features")
        rows = slice(rank * n, (rank + 1) * n)
        bias = None if layer.bias is None else layer.bias.detach()[rows].to(device)
        shard = cls(
            _owned(CB[rows], device),
            _owned(SCB[rows], device),
            bias,
            layer.in_features,
            layer.out_features,
            layer.state.threshold,
            group,
            gather_output,
        )
        if shard.bias is not None:
            shard.bias.requires_grad_(layer.bias.requires_grad)
        return shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features, self.CB.device, type(self).__name__)
        return _ColumnParallel.apply(
            x,
            self.CB,
            self.SCB,
            self.bias,
            self.threshold,
            self.group,
            self.rank,
            self.world_size,
            self.gather_output,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gather_output={self.gather_output}"


class RowParallelLinear8bitLt(_ParallelBase):
    """An int8 linear layer split over its input features (see the module doc).

    Holds this rank's ``CB_padded`` (out, in / size + 1) int8 (its ``CB`` column slice plus a
    zero column; :attr:`CB` is the slice itself), the whole ``SCB`` (out,) float32 as buffers
    and the whole ``bias`` as a parameter. ``forward(x)`` takes this rank's slice (..., in /
    size) when ``input_is_parallel=True`` (the output of a column-parallel layer with
    ``gather_output=False``), else the whole ``x`` (..., in), and returns the whole (..., out)
    on every rank. Build it with :meth:`from_linear8bit` (or :func:`shard_linear8bit`).
    """

    def __init__(
        self,
        CB: torch.Tensor,
        SCB: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        out_features: int,
        threshold: float = 0.0,
        group=None,
        input_is_parallel: bool = False,
    ):
        super().__init__(in_features, out_features, threshold, group)
        k = _chunk(self.in_features, self.world_size, "in_features")
        _ops.check_weight(CB, SCB, bias, k)
        _ops.check_same_device(CB=CB, SCB=SCB, bias=bias)
        if CB.shape[0] != self.out_features:
            raise ValueError(
                f"CB must have {self.out_features} rows (out_features), got shape {tuple(CB.shape)}"
            )
        self.input_is_parallel = bool(input_is_parallel)
        padded = torch.zeros((CB.shape[0], k + 1), dtype=torch.int8, device=CB.device)
        padded[:, :k] = CB
        self.register_buffer("CB_padded", padded)
        self.register_buffer("SCB", SCB.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def CB(self) -> torch.Tensor:
        """This rank's (out, in / size) int8 slice of the weight (a view of ``CB_padded``)."""
        return self.CB_padded[:, :-1]

    @classmethod
    def from_linear8bit(
        cls,
        layer: Linear8bitLt,
        group=None,
        input_is_parallel: bool = False,
        device: torch.device | str | None = None,
    ) -> RowParallelLinear8bitLt:
        """This rank's row shard of a quantized ``layer`` (whole on every rank), on ``device``
        (default: the layer's)."""
        CB, SCB = _int8_weight(layer)
        rank, size = _group_rank_size(group)
        k = _chunk(layer.in_features, size, "in_features")
        bias = None if layer.bias is None else layer.bias.detach().to(device)
        shard = cls(
            CB[:, rank * k : (rank + 1) * k].to(device),
            _owned(SCB, device),
            bias,
            layer.in_features,
            layer.out_features,
            layer.state.threshold,
            group,
            input_is_parallel,
        )
        if shard.bias is not None:
            shard.bias.requires_grad_(layer.bias.requires_grad)
        return shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.in_features // self.world_size
        name = type(self).__name__
        if self.input_is_parallel:
            _check_input(x, k, self.CB_padded.device, name)
        else:
            _check_input(x, self.in_features, self.CB_padded.device, name)
            x = _ScatterLast.apply(x, self.group, self.rank, self.world_size)
        return _RowParallel.apply(
            x, self.CB_padded, self.SCB, self.bias, self.threshold, self.group
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input_is_parallel={self.input_is_parallel}"


# --- whole layers and models --------------------------------------------------------------------


def shard_linear8bit(
    layer: Linear8bitLt,
    group=None,
    style: str = "column",
    *,
    gather_output: bool = True,
    input_is_parallel: bool = False,
    device: torch.device | str | None = None,
) -> nn.Module:
    """This rank's shard of the quantized ``layer``: ``style="column"`` (split out_features;
    ``gather_output``) or ``"row"`` (split in_features; ``input_is_parallel``). Call it on
    every rank of ``group`` (default: the whole world) with the same layer.

    Example (each of 2 processes, after ``torch.distributed.init_process_group("gloo")``)::

        layer = lt8.nn.Linear8bitLt(1024, 4096, has_fp16_weights=False, threshold=6.0)
        layer.weight = lt8.nn.Int8Params(fp.weight.data, requires_grad=False)
        layer = layer.to("cpu")                      # quantizes
        tp = shard_linear8bit(layer, style="column")  # this rank's 2048 output rows
        y = tp(x)                                    # (..., 4096), bit-identical to layer(x)
    """
    if style == "column":
        return ColumnParallelLinear8bitLt.from_linear8bit(layer, group, gather_output, device)
    if style == "row":
        return RowParallelLinear8bitLt.from_linear8bit(layer, group, input_is_parallel, device)
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def shard_model(
    model: nn.Module, plan: Mapping[str, str], group=None, device: torch.device | str | None = None
) -> nn.Module:
    """Replaces (in place) the ``Linear8bitLt`` layers of ``model`` named by ``plan`` with their
    shards on this rank, and returns the model.

    ``plan`` maps glob patterns (``fnmatch``, on a module's dotted name or on its last
    component: ``"up_proj"``, ``"layers.*.mlp.up_proj"``) to ``"column"`` or ``"row"``, in Megatron-LM's pairing: a
    column layer keeps its output split (``gather_output=False``) and a row layer takes a split
    input (``input_is_parallel=True``), so ``{"up_proj": "column", "down_proj": "row"}`` runs an
    MLP with one all-reduce and elementwise glue in between. Layers between them must work on
    a slice of the features (attention heads split this way need the model's head count divided
    by the group's size). Each pattern must match a ``Linear8bitLt``; a layer matched by
    patterns of both styles is an error.
    """
    if not isinstance(plan, Mapping) or not plan:
        raise ValueError(
            f"plan must be a non-empty mapping of name patterns to 'column'/'row', got {plan!r}"
        )
    for pattern, style in plan.items():
        if style not in STYLES:
            raise ValueError(f"plan[{pattern!r}] must be one of {STYLES}, got {style!r}")
    chosen: dict[str, str] = {}
    used = set()
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, Linear8bitLt):
            continue
        hits = {p: s for p, s in plan.items() if _plan_matches(name, p)}
        if not hits:
            continue
        styles = set(hits.values())
        if len(styles) > 1:
            raise ValueError(f"{name} matches both column and row patterns: {sorted(hits)}")
        chosen[name] = styles.pop()
        used.update(hits)
    unused = [p for p in plan if p not in used]
    if unused:
        raise ValueError(
            f"plan patterns {unused} match no Linear8bitLt of this {type(model).__name__}"
        )
    for name, style in chosen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        shard = shard_linear8bit(
            getattr(parent, child),
            group,
            style,
            gather_output=False,
            input_is_parallel=True,
            device=device,
        )
        setattr(parent, child, shard)
    return model

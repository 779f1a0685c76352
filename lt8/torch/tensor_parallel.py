"""Tensor parallelism for ``Linear8bitLt`` through PyTorch's own engine (DTensor).

torch's stock styles shard lt8's int8 layers as they shard ``nn.Linear``::

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, parallelize_module)

    mesh = init_device_mesh("cuda", (world_size,))
    parallelize_module(block, mesh, {
        "self_attn.q_proj": ColwiseParallel(), ...,
        "self_attn.o_proj": RowwiseParallel(),
    })

``ColwiseParallel`` and ``RowwiseParallel`` (any ``input_layouts``, ``output_layouts``,
``use_local_output``) replace a ``Linear8bitLt``'s weight by a DTensor of its int8 values
(``Shard(0)`` / ``Shard(1)``) and its bias as for ``nn.Linear`` (``Shard(0)`` / ``Replicate``).
When that weight is registered, :func:`adopt_sharded_weight` (run by a parameter-registration
hook that importing ``lt8.torch`` installs, :mod:`lt8.torch.parallel`) gives it its scales
``SCB`` as a DTensor (``Shard(0)`` / ``Replicate``) and makes the layer compute on its local
shard with lt8's kernels, returning the DTensor layout the style expects. The model needs no
wrapper and no lt8-specific style; ``state_dict()`` holds DTensors of the global shapes.

Numerics (each rank holds one contiguous chunk of the sharded dimension):

* Column (split output features): every rank sees the whole ``x`` (same outlier columns, same
  row scales), and the shard's int8 rows and scales *are* the unsharded layer's, so its output
  slice is **bit-identical** to the unsharded layer's. Backward: each rank's input gradient is
  a float32 partial sum over its output features; the partials are all-reduced in float32 and
  rounded once to x's dtype (the unsharded gradient up to float32 summation order).
* Row (split input features): LLM.int8() quantizes each row of ``x`` by its absmax over the
  non-outlier columns, which spans every rank. One ``all_reduce(MAX)`` of the local row absmax
  (M floats) gives every rank the unsharded scale, so each rank quantizes its slice of ``x`` to
  exactly the unsharded int8 values (the **int8 part is exact**). With ``threshold == 0`` the
  int32 products are all-reduced (exact) and dequantized once: **bit-identical**. With
  ``threshold > 0`` each rank's fused kernel gives a float32 partial (its int32 products
  dequantized plus its own outlier columns' float terms); the partials are summed in float32
  and the bias added once, so the result equals the unsharded one up to float32 rounding of
  that sum (a few float32 ulps; rarely one ulp of float16/bfloat16 after the final rounding).
  Backward needs no collective: each input feature's gradient is the unsharded kernel's
  (bit-identical).

Why a padded weight in the row layer: the fused kernel takes a row's scale from the data it is
given. The row layer appends one column holding the group's row absmax to its slice of ``x``
(then zero columns up to ``_PAD``) and multiplies with its ``CB`` slice plus ``_PAD`` zero
columns, so the kernel quantizes with the group's scale while those columns add nothing. The
weight's local shard is a view into that padded buffer (``16 * out`` bytes more than the
shard), so no call copies the weight; 16 columns keep the padded K a multiple of 4, which
cuBLASLt's int8 GEMM needs (cuda/gemm/cublaslt_gemm.cu), and rows 16-byte aligned (with one
column every row-parallel call fell back to lt8's own GEMM).

Only int8 layers (``has_fp16_weights=False``, moved to their device) on the LLM.int8() path
(not ``force_no_igemmlt``) are sharded; gradients reach the input and the bias, the int8
weights never change. The mesh must be one-dimensional (pass the tensor-parallel sub-mesh).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from lt8._native import C
from lt8.torch import _ops
from lt8.torch.nn import Linear8bitLt

__all__ = ["adopt_sharded_weight", "int8_weight"]

#: Rows up to which a row-parallel shard with outliers runs the fused op (its decode GEMV) on a
#: float32 copy of x; larger ones run its pieces. The kernel library's own GEMV bound.
_FUSED_PARTIAL_MAX_ROWS = C.small_batch_rows()
#: Zero columns past a row-parallel weight shard (see the module doc).
_PAD = 16


# --- checks -------------------------------------------------------------------------------------


def int8_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(CB, SCB) of a quantized ``Linear8bitLt``, or a clear error naming what is missing."""
    if not isinstance(layer, Linear8bitLt):
        raise TypeError(f"layer must be an lt8 Linear8bitLt, got {type(layer).__name__}")
    if layer.state.has_fp16_weights:
        raise ValueError(
            "layer keeps a float master weight (has_fp16_weights=True); only int8 "
            "layers (has_fp16_weights=False) can be sharded"
        )
    if layer.state.force_no_igemmlt:
        raise ValueError(
            "layer uses the weight-only path (state.force_no_igemmlt=True), which the "
            "tensor-parallel int8 layers do not implement"
        )
    w = layer.weight
    if isinstance(w, DTensor):
        raise ValueError("layer is sharded already (its weight is a DTensor)")
    if w.dtype != torch.int8 or getattr(w, "SCB", None) is None:
        raise ValueError(
            "layer is not quantized yet: move it to its device first "
            "(layer.to(device); on the CPU layer.to('cpu')), then shard it"
        )
    return w.data, w.SCB


def _group(mesh) -> dist.ProcessGroup:
    if mesh.ndim != 1:
        raise ValueError(
            f"lt8's tensor-parallel styles take a one-dimensional mesh (the tensor-parallel "
            f"sub-mesh, e.g. mesh['tp']), got {mesh.ndim} dimensions"
        )
    return mesh.get_group()


def _chunk(n: int, size: int, what: str) -> int:
    if n % size:
        raise ValueError(f"{what} = {n} must be divisible by the mesh's size {size}")
    return n // size


def _check_input(x: torch.Tensor, K: int, device: torch.device, layer: str) -> None:
    """Raised before any collective, so that a bad input fails on every rank instead of leaving
    the others waiting."""
    _ops.check_float(x, "x")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(
            f"{layer}: x must have {K} features in its last dimension, got shape {tuple(x.shape)}"
        )
    if x.device != device:
        raise ValueError(f"{layer}: x is on {x.device} but this rank's weights are on {device}")


# --- the local computations (autograd functions over a process group) ---------------------------


def _sum_rows(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _ops._sum_rows(g).to(dtype)


class _ColumnLocal(torch.autograd.Function):
    """y_r = int8_linear(x, CB_r, SCB_r, bias_r); dx = all_reduce_sum_r(dy_r @ W_r) in float32."""

    @staticmethod
    def forward(ctx, x, CB, SCB, bias, threshold, group):
        ctx.save_for_backward(CB, SCB)
        ctx.meta = (group, x.dtype, None if bias is None else bias.dtype)
        return torch.ops.lt8.int8_linear(x, CB, SCB, bias, threshold)

    @staticmethod
    def backward(ctx, grad):
        CB, SCB = ctx.saved_tensors
        group, x_dtype, bias_dtype = ctx.meta
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # float32 partials summed in float32, then one rounding to x's dtype.
            partial = torch.ops.lt8.int8_linear_grad_input(grad.float(), CB, SCB)
            dist.all_reduce(partial, group=group)
            grad_x = partial.to(x_dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = _sum_rows(grad, bias_dtype)
        return grad_x, None, None, grad_bias, None, None


class _RowLocal(torch.autograd.Function):
    """y = sum_r LLM.int8()(x_r, CB_r) with the group's row scales, + bias (see the module doc)."""

    @staticmethod
    def forward(ctx, x_r, CB, SCB, bias, threshold, group):
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
        CB_padded = _padded(CB)
        if threshold == 0.0:
            x_ext = _extended(x_r, scale_col, x_r.dtype)
            q, row_scale, _ = torch.ops.lt8.quantize_rows(x_ext, 0.0)
            acc = torch.ops.lt8.int8_gemm(q, CB_padded)
            dist.all_reduce(acc, group=group)  # int32: exact
            out = torch.ops.lt8.dequant_epilogue(acc, row_scale, SCB, bias, x_r.dtype)
        else:
            if x_r.numel() // max(x_r.shape[-1], 1) <= _FUSED_PARTIAL_MAX_ROWS:
                # Decode sizes: the fused op on a float32 copy (its GEMV; a float32 result).
                x_ext = _extended(x_r, scale_col, torch.float32)
                partial = torch.ops.lt8.int8_linear(x_ext, CB_padded, SCB, None, threshold)
            else:
                # The fused op's pieces in its order, with a float32 result: the outlier terms
                # of 16-bit x take the tensor cores when there are many (a shard of Llama's
                # down_proj over a long prompt has every column flagged), as the fused op does.
                x_ext = _extended(x_r, scale_col, x_r.dtype)
                q, row_scale, mask = torch.ops.lt8.quantize_rows(x_ext, threshold)
                acc = torch.ops.lt8.int8_gemm(q, CB_padded)
                partial = torch.ops.lt8.dequant_epilogue(acc, row_scale, SCB, None, torch.float32)
                partial = torch.ops.lt8.add_outlier_terms(x_ext, mask, CB_padded, SCB, partial)
            dist.all_reduce(partial, group=group)
            if bias is not None:
                partial = partial + bias.float()
            out = partial.to(x_r.dtype)
        ctx.save_for_backward(CB, SCB)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        CB, SCB = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.lt8.int8_linear_grad_input(grad, CB, SCB)
        if ctx.needs_input_grad[3]:
            grad_bias = _sum_rows(grad, ctx.bias_dtype)
        return grad_x, None, None, grad_bias, None, None


# --- the styles ---------------------------------------------------------------------------------


def _local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def _column_forward(module: Linear8bitLt, mesh, x: DTensor) -> DTensor:
    # The input gradient of every rank is the whole, already all-reduced one: Replicate.
    x_local = x.to_local(grad_placements=[Replicate()])
    CB, SCB = module.weight.to_local(), module.weight.SCB.to_local()
    _check_input(x_local, module.in_features, CB.device, "column-parallel Linear8bitLt")
    y = _ColumnLocal.apply(
        x_local, CB, SCB, _local(module.bias), module.state.threshold, _group(mesh)
    )
    return DTensor.from_local(y, mesh, [Shard(-1)], run_check=False)


def _row_forward(module: Linear8bitLt, mesh, x: DTensor) -> DTensor:
    x_local = x.to_local()  # this rank's slice; its gradient is this rank's slice too
    CB, SCB = module.weight.to_local(), module.weight.SCB.to_local()
    _check_input(x_local, CB.shape[1], CB.device, "row-parallel Linear8bitLt")
    y = _RowLocal.apply(x_local, CB, SCB, _local(module.bias), module.state.threshold, _group(mesh))
    return DTensor.from_local(y, mesh, [Replicate()], run_check=False)


def adopt_sharded_weight(module: Linear8bitLt, weight: DTensor) -> nn.Parameter:
    """Makes ``module`` (a quantized ``Linear8bitLt``) run on ``weight``, the DTensor of its
    int8 values that torch's ``ColwiseParallel`` (``Shard(0)``) or ``RowwiseParallel``
    (``Shard(1)``) is about to register in place of its ``Int8Params``: the scales ``SCB``
    become a DTensor placed to match (``Shard(0)`` / ``Replicate``, sent from rank 0 as torch's
    styles send the weight by default), and the layer's ``forward`` runs on the local shard
    (see the module doc). Raises, leaving the layer as it was, for a layer or a weight that
    cannot be sharded so. Returns the weight to register (the row layer's keeps its shard in a
    buffer ``_PAD`` zero columns wider, which the kernel needs). :mod:`lt8.torch.parallel` calls it
    from a parameter-registration hook, so that the stock styles need no lt8 subclass."""
    CB, SCB = int8_weight(module)
    mesh = weight.device_mesh
    _group(mesh)
    if weight.dtype != torch.int8 or tuple(weight.shape) != tuple(CB.shape):
        raise ValueError(
            f"the DTensor weight of a Linear8bitLt must be its int8 weight {tuple(CB.shape)}, "
            f"sharded; got {weight.dtype} {tuple(weight.shape)}"
        )
    (placement,) = weight.placements
    if placement in (Shard(0), Shard(-2)):
        _chunk(module.out_features, mesh.size(), "out_features")
        scb_placement, forward = Shard(0), _column_forward
    elif placement in (Shard(1), Shard(-1)):
        _chunk(module.in_features, mesh.size(), "in_features")
        scb_placement, forward = Replicate(), _row_forward
    else:
        raise ValueError(
            f"a Linear8bitLt's weight shards as Shard(0) (ColwiseParallel) or Shard(1) "
            f"(RowwiseParallel), got {placement}"
        )
    if forward is _row_forward:
        weight = _padded_row_weight(weight)
    weight.SCB = distribute_tensor(SCB, mesh, [scb_placement], src_data_rank=0)
    # The layer's bookkeeping follows the weight (and lets go of the whole int8 matrix).
    module.state.CB, module.state.SCB = weight, weight.SCB
    module.forward = partial(forward, module, mesh)
    return weight


def _extended(x_r: torch.Tensor, scale_col: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x_r`` in ``dtype`` with the group's row absmax as one more column, then zero columns up
    to ``_PAD`` more (zeros are neither outliers nor above any absmax)."""
    zeros = x_r.new_zeros((*x_r.shape[:-1], _PAD - 1), dtype=dtype)
    return torch.cat([x_r.to(dtype), scale_col.to(dtype), zeros], dim=-1)


def _padded_row_weight(weight: DTensor) -> nn.Parameter:
    """The row-parallel weight with its local shard a view into a buffer ``_PAD`` zero columns
    wider (the kernel's padded operand, see the module doc), so that no call copies the weight."""
    local = weight.to_local()
    padded = torch.nn.functional.pad(local, (0, _PAD))
    view = padded[:, :-_PAD]
    return nn.Parameter(
        DTensor.from_local(
            view,
            weight.device_mesh,
            weight.placements,
            run_check=False,
            shape=weight.shape,
            stride=weight.stride(),
        ),
        requires_grad=False,
    )


def _padded(CB: torch.Tensor) -> torch.Tensor:
    """``CB`` plus ``_PAD`` zero columns: the buffer it is a view of when it is one, else a
    copy."""
    rows, k = CB.shape
    padded_view = CB.stride() == (k + _PAD, 1)
    if padded_view and not torch.compiler.is_compiling():
        # Eagerly the storage is checked too (torch.compile cannot trace storage queries; the
        # stride alone is what adopt_sharded_weight's view has).
        padded_view = (
            CB.storage_offset() == 0
            and CB.untyped_storage().nbytes() == rows * (k + _PAD) * CB.element_size()
        )
    if padded_view:
        # The columns past the view are the zero padding: nothing can write them through it.
        return CB.as_strided((rows, k + _PAD), (k + _PAD, 1))
    return torch.nn.functional.pad(CB, (0, _PAD))

"""Tensor parallelism hooks for lt8 layers, and Megatron-style plans over ``parallelize_module``.

Importing this module (``import lt8.torch`` does) installs a parameter-registration hook: when
torch's ``ColwiseParallel`` / ``RowwiseParallel`` register the DTensor weight of a
``Linear8bitLt``, :func:`lt8.torch.tensor_parallel.adopt_sharded_weight` gives it its scales and
its local forward, so ``parallelize_module`` shards int8 layers with torch's own styles (see
:mod:`lt8.torch.tensor_parallel` for the layouts and the numerics). The hook costs one
``isinstance`` test per registered parameter and imports DTensor only when it sees one.

:func:`shard_model` turns ``{"up_proj": "column", "down_proj": "row"}`` into a
``parallelize_module`` plan of those styles.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch.distributed as dist
from torch import nn

from lt8.torch.nn import Linear8bitLt

__all__ = ["STYLES", "shard_model"]

STYLES = ("column", "row")


def _on_register_parameter(module: nn.Module, name: str, param):
    """The global hook: a DTensor weight registered on a Linear8bitLt -> adopt it."""
    if name != "weight" or not isinstance(module, Linear8bitLt):
        return None
    if not type(param).__module__.startswith("torch.distributed.tensor"):
        return None  # the layer's own Int8Params
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        from lt8.torch.tensor_parallel import adopt_sharded_weight

        return adopt_sharded_weight(module, param)
    return None


_HOOK = nn.modules.module.register_module_parameter_registration_hook(_on_register_parameter)


def _plan_matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name.rpartition(".")[2], pattern
    )


def _default_mesh(model: nn.Module):
    from torch.distributed.device_mesh import DeviceMesh

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "shard_model needs torch.distributed: call torch.distributed.init_process_group first"
        )
    devices = {p.device.type for p in model.parameters()}
    device_type = "cuda" if "cuda" in devices else "cpu"
    return DeviceMesh(device_type, list(range(dist.get_world_size())))


def shard_model(model: nn.Module, plan: Mapping[str, str], mesh=None) -> nn.Module:
    """Shards (in place) the ``Linear8bitLt`` layers of ``model`` that ``plan`` names over
    ``mesh`` (a one-dimensional ``DeviceMesh``; default: every rank of the default process
    group), with ``parallelize_module``; returns the model.

    ``plan`` maps glob patterns (``fnmatch``, on a module's dotted name or on its last
    component: ``"up_proj"``, ``"layers.*.mlp.up_proj"``) to ``"column"`` or ``"row"``, in
    Megatron-LM's pairing: a column layer keeps its output split (``Shard(-1)``, local) and a
    row layer takes a split input, so ``{"up_proj": "column", "down_proj": "row"}`` runs an MLP
    with one all-reduce and elementwise glue in between. Layers between them must work on a
    slice of the features (attention heads split this way need the head count divided by the
    mesh's size). Each pattern must match a ``Linear8bitLt``; a layer matched by patterns of
    both styles is an error. Call it on every rank with the same quantized model.
    """
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    from lt8.torch.tensor_parallel import int8_weight

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
    for name in chosen:  # every layer checked before any is sharded
        int8_weight(model.get_submodule(name))
    mesh = _default_mesh(model) if mesh is None else mesh
    styles = {"column": ColwiseParallel, "row": RowwiseParallel}
    # Exact names: parallelize_module reads dots as path separators and globs each part.
    tp_plan = {name: styles[style]() for name, style in chosen.items()}
    parallelize_module(model, mesh, tp_plan)
    return model

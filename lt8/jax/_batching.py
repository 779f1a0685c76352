"""vmap rules for lt8's row-wise kernels.

lt8's kernels treat every leading dimension of an activation as one more batch of rows, so a
``jax.vmap`` that batches only activation-like operands ("row operands") can hand the batched
arrays straight to the kernel: one call, no loop. When a weight-like operand (a 2-D int8 matrix,
its scales, a bias) is batched, or when folding would change the result (the outlier mask is one
per call, so with outlier decomposition every vmapped element needs its own call), the rule
falls back to ``lax.map``: one kernel call per element, exactly the unbatched semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

__all__ = ["rowwise"]


def rowwise(
    raw: Callable[..., Any], n_rows: int, fold: bool = True, folded_out_batched: Any = True
) -> Callable[..., Any]:
    """``raw(*row_operands, *other_operands)`` with a vmap rule.

    Args:
        raw: the unbatched function (an FFI call); its first ``n_rows`` operands are
            activation-like: their leading dimensions are rows of the kernel.
        n_rows: how many leading operands are row operands.
        fold: whether a batch of row operands alone may be folded into the kernel's rows.
        folded_out_batched: the ``out_batched`` pytree of a folded call (an output that does not
            depend on the rows, e.g. the threshold-0 outlier mask, is ``False``).

    Returns:
        A function with the same signature whose ``vmap`` makes one kernel call when it can and
        loops with ``lax.map`` otherwise.
    """
    fun = custom_vmap(raw)

    @fun.def_vmap
    def _rule(axis_size: int, in_batched: Sequence[bool], *args):
        row_batched, other_batched = in_batched[:n_rows], in_batched[n_rows:]
        if fold and not any(other_batched):
            rows = [
                a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                for a, b in zip(args[:n_rows], row_batched)
            ]
            return fun(*rows, *args[n_rows:]), folded_out_batched
        batched_idx = [i for i, b in enumerate(in_batched) if b]

        def one(xs):
            full = list(args)
            for i, x in zip(batched_idx, xs):
                full[i] = x
            return fun(*full)

        out = jax.lax.map(one, tuple(args[i] for i in batched_idx))
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return fun

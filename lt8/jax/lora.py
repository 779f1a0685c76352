"""LoRA adapters on frozen int8 weights (Flax linen).

:class:`LoRADense8bit` is a :class:`~lt8.jax.Dense8bit` (submodule ``"base"``, int8 weight in
the "int8" collection, bias in "params") plus a trainable low-rank update ``(alpha / rank) *
x @ lora_A @ lora_B`` whose ``lora_A`` (in, rank) and ``lora_B`` (rank, features) live in
"params". ``lora_B`` starts at zero, so a fresh adapter changes nothing.

Training updates only the adapters: :func:`lora_optimizer` wraps an optax optimizer so that
every other "params" leaf (the base layers' biases, LayerNorms, ...) gets a zero update, and the
"int8" collection is never differentiated at all (it is not "params")::

    tx = lora_optimizer(optax.adam(1e-3), variables["params"])
    opt_state = tx.init(variables["params"])
    grads = jax.grad(loss)(variables["params"])     # loss closes over variables["int8"]
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lt8.jax.linen import INT8_COLLECTION, Dense8bit

__all__ = ["LORA_PARAMS", "LoRADense8bit", "lora_mask", "lora_optimizer"]

#: Names of the adapter leaves in "params".
LORA_PARAMS = ("lora_A", "lora_B")

Array = Any


class LoRADense8bit(nn.Module):
    """``Dense8bit`` with a trainable rank-``rank`` update; a drop-in for ``nn.Dense``.

    Attributes:
        features, use_bias, threshold, dtype, param_dtype: as :class:`~lt8.jax.Dense8bit`
            (which runs as the submodule ``"base"`` in inference mode: int8 weight, frozen).
        rank: rank of the update (>= 1).
        alpha: the update is multiplied by ``alpha / rank``.
        lora_init: initializer of ``lora_A`` (in, rank); ``lora_B`` starts at zero.
    """

    features: int
    rank: int = 8
    alpha: float = 16.0
    use_bias: bool = True
    threshold: float = 6.0
    dtype: Any | None = None
    param_dtype: Any = jnp.float32
    lora_init: Any = nn.initializers.he_uniform()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")
        x = jnp.asarray(x)
        y = Dense8bit(
            self.features,
            use_bias=self.use_bias,
            threshold=self.threshold,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="base",
        )(x)
        A = self.param("lora_A", self.lora_init, (x.shape[-1], self.rank), self.param_dtype)
        B = self.param(
            "lora_B", nn.initializers.zeros_init(), (self.rank, self.features), self.param_dtype
        )
        xa = x.astype(self.param_dtype)
        update = (xa @ A) @ B * (self.alpha / self.rank)
        return y + update.astype(y.dtype)

    def variables_from_base(
        self, key: jax.Array, base_variables: Mapping[str, Any], in_features: int
    ) -> dict:
        """Variables for this layer around a pretrained ``Dense8bit``'s inference variables
        (``Dense8bit.variables_from_dense`` / ``variables_from_torch``): the base is used as
        it is, ``lora_A`` is drawn from ``key`` and ``lora_B`` is zero."""
        if INT8_COLLECTION not in base_variables:
            raise ValueError(
                f"base_variables must be Dense8bit inference variables with an "
                f"{INT8_COLLECTION!r} collection, got {sorted(base_variables)}"
            )
        CB = base_variables[INT8_COLLECTION]["CB"]
        if tuple(CB.shape) != (self.features, in_features):
            raise ValueError(
                f"base weight CB has shape {tuple(CB.shape)}, expected (features, in) = "
                f"{(self.features, in_features)}"
            )
        params = dict(base_variables.get("params", {}))
        return {
            "params": {
                "base": params,
                "lora_A": self.lora_init(key, (in_features, self.rank), self.param_dtype),
                "lora_B": jnp.zeros((self.rank, self.features), self.param_dtype),
            },
            INT8_COLLECTION: {"base": dict(base_variables[INT8_COLLECTION])},
        }


def lora_mask(params) -> Any:
    """A tree of bools like ``params``: True at the adapter leaves (``lora_A``/``lora_B``)."""

    def is_lora(path, _leaf):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) in LORA_PARAMS

    return jax.tree_util.tree_map_with_path(is_lora, params)


def lora_optimizer(tx, params):
    """``tx`` (an optax ``GradientTransformation``) applied to the adapter leaves of ``params``
    only; every other leaf gets a zero update (``optax.masked`` would instead pass the raw
    gradient through as the update of the leaves it skips)."""
    import optax

    labels = jax.tree_util.tree_map(lambda m: "lora" if m else "frozen", lora_mask(params))
    if "lora" not in jax.tree_util.tree_leaves(labels):
        raise ValueError(f"lora_optimizer: params hold no {' or '.join(LORA_PARAMS)} leaf")
    return optax.multi_transform({"lora": tx, "frozen": optax.set_to_zero()}, labels)

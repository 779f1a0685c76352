"""The same BERT sentence encoder in JAX: pure functions over a parameter pytree.

Every projection goes through :func:`dense`: a pair ``{"CB", "SCB", "b"}`` (int8 weight, float32
row scales, bias: the tensors of a torch ``Linear8bitLt``) runs ``lt8.jax.ops.linear``, lt8's
LLM.int8() kernel; a pair ``{"w", "b"}`` (float weight) runs an ordinary float32 matmul. The
operations follow ``minilm_torch`` one for one, in the same order, so the two frameworks differ
only by the float32 rounding of their non-lt8 ops (matmuls in attention, softmax, LayerNorm, erf).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lt8.demo.model_files import BertConfig
from lt8.jax import ops

# Full float32 matmuls on GPUs too (JAX's default there may use TF32), as torch does by default.
HIGHEST = lax.Precision.HIGHEST


def params_from_torch(model) -> dict:
    """The pytree of a ``minilm_torch.BertEncoder`` (float or converted by ``replace_linear``) as
    numpy arrays. Linear8bitLt layers contribute their own int8 ``CB`` and ``SCB``: JAX runs the
    very bytes that torch runs."""
    import torch

    from lt8.torch import Linear8bitLt

    def arr(t):
        return np.asarray(t.detach().cpu().numpy())

    def dense(m):
        if isinstance(m, Linear8bitLt):
            w = m.weight
            if w.dtype != torch.int8 or w.SCB is None:
                raise ValueError("Linear8bitLt is not quantized yet (move it to a device first)")
            return {"CB": arr(w.data), "SCB": arr(w.SCB), "b": arr(m.bias)}
        return {"w": arr(m.weight), "b": arr(m.bias)}

    def norm(m):
        return {"scale": arr(m.weight), "bias": arr(m.bias)}

    e = model.embeddings
    layers = []
    for layer in model.encoder.layer:
        att = layer.attention
        layers.append(
            {
                "query": dense(att.self.query),
                "key": dense(att.self.key),
                "value": dense(att.self.value),
                "attn_out": dense(att.output.dense),
                "attn_norm": norm(att.output.LayerNorm),
                "intermediate": dense(layer.intermediate.dense),
                "out": dense(layer.output.dense),
                "out_norm": norm(layer.output.LayerNorm),
            }
        )
    return {
        "word": arr(e.word_embeddings.weight),
        "position": arr(e.position_embeddings.weight),
        "token_type": arr(e.token_type_embeddings.weight),
        "emb_norm": norm(e.LayerNorm),
        "layers": layers,
    }


def dense(p: dict, x: jax.Array, threshold: float) -> jax.Array:
    if "CB" in p:  # lt8's LLM.int8() linear: int8 weight, int8 activations + float outlier columns
        return ops.linear(x, p["CB"], p["SCB"], p["b"], threshold=threshold)
    return jnp.matmul(x, p["w"].T, precision=HIGHEST) + p["b"]


def layer_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":  # exact erf GELU, written as torch's CPU kernel writes it
        return x * 0.5 * (1.0 + lax.erf(x * np.float32(math.sqrt(0.5))))
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.relu(x)


def hidden_states(
    params: dict,
    input_ids,
    attention_mask,
    token_type_ids,
    *,
    config: BertConfig,
    threshold: float = 6.0,
) -> jax.Array:
    """Last hidden states (B, S, hidden) in float32."""
    c = config
    B, S = input_ids.shape
    x = params["word"][input_ids] + params["token_type"][token_type_ids]
    x = x + params["position"][:S]
    x = layer_norm(params["emb_norm"], x, c.layer_norm_eps)
    keep = attention_mask[:, None, None, :].astype(x.dtype)
    mask_bias = (1.0 - keep) * jnp.finfo(x.dtype).min
    scale = np.float32(math.sqrt(c.head_dim))

    def heads(t):  # (B, S, H) -> (B, heads, S, head_dim)
        return t.reshape(B, S, c.num_attention_heads, c.head_dim).transpose(0, 2, 1, 3)

    for p in params["layers"]:
        q = heads(dense(p["query"], x, threshold))
        k = heads(dense(p["key"], x, threshold))
        v = heads(dense(p["value"], x, threshold))
        scores = jnp.matmul(q, k.transpose(0, 1, 3, 2), precision=HIGHEST) / scale + mask_bias
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = (
            jnp.matmul(probs, v, precision=HIGHEST)
            .transpose(0, 2, 1, 3)
            .reshape(B, S, c.hidden_size)
        )
        a = layer_norm(p["attn_norm"], dense(p["attn_out"], ctx, threshold) + x, c.layer_norm_eps)
        h = activation(c.hidden_act, dense(p["intermediate"], a, threshold))
        x = layer_norm(p["out_norm"], dense(p["out"], h, threshold) + a, c.layer_norm_eps)
    return x


def pool(h: jax.Array, attention_mask, mode: str, normalize: bool) -> jax.Array:
    if mode == "cls":
        e = h[:, 0]
    else:
        m = attention_mask[:, :, None].astype(h.dtype)
        e = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    if normalize:
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e


@functools.partial(jax.jit, static_argnames=("config", "threshold", "pooling", "normalize"))
def embed(
    params: dict,
    input_ids,
    attention_mask,
    token_type_ids,
    *,
    config: BertConfig,
    threshold: float = 6.0,
    pooling: str = "mean",
    normalize: bool = True,
) -> jax.Array:
    """Sentence embeddings (B, hidden), jitted: the JAX twin of ``BertEncoder.embed``."""
    h = hidden_states(
        params, input_ids, attention_mask, token_type_ids, config=config, threshold=threshold
    )
    return pool(h, attention_mask, pooling, normalize)

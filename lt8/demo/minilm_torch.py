"""A compact BERT sentence encoder in PyTorch (all-MiniLM-L6-v2 and other BERT checkpoints).

Module names follow Hugging Face's ``BertModel`` so its safetensors keys load as they are; every
projection is an ``nn.Linear`` (query, key, value, attention output, intermediate, output), so
``lt8.torch.replace_linear`` converts all of them while embeddings and LayerNorms stay float.
The JAX twin (``minilm_jax``) does the same operations in the same order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lt8.demo.model_files import BertConfig


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":  # BERT's exact GELU: x * 0.5 * (1 + erf(x / sqrt(2)))
        return F.gelu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return F.gelu(x, approximate="tanh")
    return F.relu(x)


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads, self.head_dim = c.num_attention_heads, c.head_dim
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x, mask_bias):
        B, S, H = x.shape

        def heads(t):  # (B, S, H) -> (B, heads, S, head_dim)
            return t.view(B, S, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).reshape(B, S, H)


class DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's attention output and layer output blocks."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c.hidden_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x, mask_bias):
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = c.hidden_act

    def forward(self, x):
        return activation(self.act, self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x, mask_bias):
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))


class BertEncoder(nn.Module):
    """BERT without pooler: token states, and pooled (optionally L2-normalised) sentence
    embeddings as sentence-transformers computes them."""

    def __init__(self, c: BertConfig, pooling: str = "mean", normalize: bool = True):
        super().__init__()
        self.config, self.pooling, self.normalize = c, pooling, normalize
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)

    @classmethod
    def from_state_dict(
        cls, c: BertConfig, state_dict: dict, pooling: str = "mean", normalize: bool = True
    ) -> BertEncoder:
        model = cls(c, pooling, normalize)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the BERT encoder: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        return model.eval().requires_grad_(False)

    def forward(self, input_ids, attention_mask, token_type_ids):
        """Last hidden states (B, S, hidden)."""
        x = self.embeddings(input_ids, token_type_ids)
        # Additive mask over keys: 0 where attended, the most negative float where padded.
        keep = attention_mask[:, None, None, :].to(x.dtype)
        mask_bias = (1.0 - keep) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        return x

    def embed(self, input_ids, attention_mask, token_type_ids):
        """Sentence embeddings (B, hidden): pooled token states, L2-normalised if configured."""
        h = self(input_ids, attention_mask, token_type_ids)
        return pool(h, attention_mask, self.pooling, self.normalize)


def pool(h: torch.Tensor, attention_mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    if mode == "cls":
        e = h[:, 0]
    else:  # mean over the attended tokens (sentence-transformers' Pooling, mean mode)
        m = attention_mask[:, :, None].to(h.dtype)
        e = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    if normalize:  # sentence-transformers' Normalize: F.normalize(p=2, eps=1e-12)
        e = e / torch.clamp(torch.linalg.vector_norm(e, dim=1, keepdim=True), min=1e-12)
    return e


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every Linear (plain or lt8's Linear8bitLt, a subclass) in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]

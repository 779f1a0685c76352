"""``lt8 convert IN OUT``: a float checkpoint's Linear weights to lt8's 8-bit format.

IN is a weights file (safetensors, or a torch ``.bin``/``.pt`` state dict, read with
``torch.load(weights_only=True)``) or a model folder (``model.safetensors`` or
``pytorch_model.bin`` beside ``config.json``). A folder converts to a folder: OUT gets every other
file of IN (config, tokenizer, ...) and ``model.safetensors`` with the int8 weights, and its
``config.json`` gains the ``quantization_config`` of :class:`lt8.hf.Lt8Config`, so that
``lt8.hf.from_pretrained_8bit(OUT)`` (or ``from_pretrained`` after ``import lt8.hf``) loads it.
A file converts to a file (OUT may be a folder: the file keeps IN's name).

Which 2-D weights are Linear layers: with the model's structure (a folder's ``config.json`` and
transformers installed, ``--config`` for a file, or ``model=`` in Python), exactly the modules
transformers' quantizer converts: ``nn.Linear`` and GPT-2's ``Conv1D``, whose (in, out) weight is
quantized transposed, as (out, in); embeddings and other modules stay in float, named in the
report. Without it, a 2-D float tensor named ``*.weight`` is taken for a Linear weight, a layer
whose bias matches the weight's second dimension (a Conv1D, stored (in, out)) is refused, and the
report says the types were guessed. Each quantized weight becomes :mod:`lt8.core.checkpoint`'s
``P.weight`` int8 (out, in), ``P.SCB`` float32 (out,), ``P.weight_format`` = 0, the bits
``replace_linear`` and ``lt8.jax.quantize_weight`` give; every other tensor is copied.

Skip patterns (``fnmatch``) are matched against a layer's dotted name and each component of it;
the defaults (:data:`DEFAULT_SKIP`) keep output heads and embedding tables in float.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lt8.core import checkpoint as ckpt

__all__ = [
    "DEFAULT_SKIP",
    "ConvertResult",
    "add_arguments",
    "convert_checkpoint",
    "is_linear_weight",
    "main",
    "report",
]

#: Layers left in float unless ``--no-default-skip``: language-model heads (``lm_head``,
#: GPT-NeoX's ``embed_out``) and embedding tables (``*embed*``, GPT-2's ``wte``/``wpe``, T5's
#: ``shared``), which are 2-D ``weight`` s but not Linear layers.
DEFAULT_SKIP = ("lm_head", "embed_out", "*embed*", "wte", "wpe", "shared")
_WEIGHT_SUFFIX = "." + ckpt.KEY_WEIGHT


@dataclass
class ConvertResult:
    """What :func:`convert_checkpoint` did. Byte counts are the tensors' data, before and after
    (file sizes add a small header)."""

    src: Path
    dst: Path
    quantized: list = field(default_factory=list)  # layer names whose weight became int8
    skipped: list = field(default_factory=list)  # Linear layers left in float by a pattern
    not_linear: list = field(default_factory=list)  # other 2-D weights ("name (kind)"), in float
    transposed: list = field(default_factory=list)  # Conv1D layers among the quantized
    structure: str = "guessed"  # "model": layer types known; "guessed": from names and shapes
    bytes_before: int = 0
    bytes_after: int = 0
    file_before: int = 0
    file_after: int = 0


def _matches(name: str, patterns: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(
        fnmatch.fnmatchcase(name, p) or any(fnmatch.fnmatchcase(c, p) for c in parts)
        for p in patterns
    )


def is_linear_weight(key: str, dtype_name: str, shape: Sequence[int]) -> bool:
    """Whether a tensor looks like a Linear weight: named ``*.weight`` (or ``weight``), 2-D,
    floating point."""
    return (
        (key == ckpt.KEY_WEIGHT or key.endswith(_WEIGHT_SUFFIX))
        and len(shape) == 2
        and dtype_name in ckpt.FLOAT_DTYPES
    )


def _layer(key: str) -> str:
    return key[: -len(ckpt.KEY_WEIGHT)].rstrip(".")


def _quantizer(backend: str | None):
    """A function float (out, in) -> (CB int8, SCB float32), numpy in and out, on lt8's CPU
    kernel through ``backend`` ("torch" or "jax"; None: torch when it is installed, else JAX).
    Both give the same bits."""
    import numpy as np

    if backend not in (None, "torch", "jax"):
        raise ValueError(f"backend must be 'torch', 'jax' or None, got {backend!r}")
    if backend in (None, "torch"):
        try:
            import torch

            import lt8.torch  # noqa: F401  (registers torch.ops.lt8)
        except ImportError:
            if backend == "torch":
                raise
        else:

            def quantize(w):
                if w.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: torch reads its bits
                    t = torch.from_numpy(np.ascontiguousarray(w).view(np.int16)).view(
                        torch.bfloat16
                    )
                else:
                    t = torch.from_numpy(np.ascontiguousarray(w))
                CB, SCB, _ = torch.ops.lt8.quantize_rows(t, 0.0)
                return CB.numpy(), SCB.numpy()

            return quantize
    try:
        import jax

        from lt8.jax import quantize_weight
    except ImportError:
        raise RuntimeError(
            "lt8 convert needs torch or jax (with lt8's frontend) to quantize"
        ) from None

    def quantize(w):
        CB, SCB = quantize_weight(jax.device_put(w, jax.devices("cpu")[0]))
        return np.asarray(CB), np.asarray(SCB)

    return quantize


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: What OUT's model folder calls its weights (transformers' single-file name).
OUT_WEIGHTS = "model.safetensors"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def _resolve_src(src: Path) -> tuple[Path, Path | None]:
    """(weights file, model folder or None) of IN."""
    if src.is_dir():
        for name in WEIGHT_FILES:
            if (src / name).is_file():
                return src / name, src
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (src / index).is_file():
                raise ValueError(
                    f"IN: {os.fspath(src)!r} holds a sharded checkpoint ({index}); lt8 convert "
                    f"reads one weights file: convert each shard on its own, or load the model "
                    f"with from_pretrained(..., quantization_config=lt8.hf.Lt8Config())"
                )
        raise FileNotFoundError(
            f"IN: no weights file ({' or '.join(WEIGHT_FILES)}) in the folder {os.fspath(src)!r}"
        )
    if not src.is_file():
        raise FileNotFoundError(f"IN: no safetensors or torch file at {os.fspath(src)!r}")
    return src, None


def _is_torch_file(path: Path) -> bool:
    if path.suffix in _TORCH_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"  # torch's zip format, or a raw pickle


class _TorchFile:
    """A torch state dict file behind safetensors' ``safe_open`` interface (keys, metadata,
    get_tensor), read with ``torch.load(weights_only=True)``: tensors only, no code runs."""

    def __init__(self, path: Path):
        try:
            import torch
        except ImportError:
            raise RuntimeError(
                f"IN: {os.fspath(path)!r} is a torch file: reading it needs torch "
                "(pip install torch), or save the weights as safetensors"
            ) from None
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever torch.load raises: unreadable
            raise ckpt.CheckpointError(
                f"IN: {os.fspath(path)!r}: torch.load(weights_only=True) cannot read it ({e}); "
                "lt8 convert reads state dicts of tensors and runs no pickled code"
            ) from None
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]  # a training checkpoint: its model's weights
        if not (
            isinstance(sd, dict)
            and sd
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
        ):
            raise ValueError(
                f"IN: {os.fspath(path)!r} holds a {type(sd).__name__}, not a state dict "
                "(a mapping of names to tensors)"
            )
        import lt8.torch  # noqa: F401  (teaches ckpt.to_numpy torch tensors, bfloat16 included)

        self._sd = sd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return list(self._sd)

    def metadata(self):
        return {}

    def get_tensor(self, key):
        return ckpt.to_numpy(self._sd[key])


def _open(path: Path):
    if _is_torch_file(path):
        return _TorchFile(path)
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(os.fspath(path), framework="np")
    except SafetensorError as e:
        raise ckpt.CheckpointError(
            f"IN: {os.fspath(path)!r} is not a readable safetensors file ({e}); a torch state "
            f"dict is read when its name ends in {'/'.join(_TORCH_SUFFIXES)}"
        ) from None


# --- which 2-D weights are Linear layers ---------------------------------------------------------

LINEAR, CONV1D = "Linear", "Conv1D"


def module_kinds(model, exact_linear: bool = False) -> dict:
    """``{module name: kind}`` for ``model`` (an ``nn.Module``): :data:`LINEAR` for an
    ``nn.Linear``, :data:`CONV1D` for transformers' ``Conv1D`` (weight stored (in, out)), else
    the module's class name (``"Embedding"``, ...). Linear subclasses count as Linear, as
    ``replace_linear`` converts them, unless ``exact_linear`` (transformers' quantizer converts
    ``nn.Linear`` itself only)."""
    from torch import nn

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        Conv1D = ()
    kinds = {}
    for name, m in model.named_modules():
        if type(m) is nn.Linear or (isinstance(m, nn.Linear) and not exact_linear):
            kinds[name] = LINEAR
        elif Conv1D and isinstance(m, Conv1D):
            kinds[name] = CONV1D
        else:
            kinds[name] = type(m).__name__
    kinds["__prefix__"] = getattr(model, "base_model_prefix", "") or ""
    return kinds


def kinds_from_config(config_path: Path) -> dict | None:
    """:func:`module_kinds` of the transformers model a ``config.json`` describes, built on the
    meta device (no memory, no weights); None when transformers or torch is missing."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig
    except ImportError:
        return None
    try:
        config = AutoConfig.from_pretrained(os.fspath(config_path))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"config: transformers cannot read {os.fspath(config_path)!r}: {e}"
        ) from None
    found = [
        getattr(transformers, n) for n in (config.architectures or ()) if hasattr(transformers, n)
    ]
    cls = found[0] if found else transformers.AutoModel
    with torch.device("meta"):
        model = cls.from_config(config) if cls is transformers.AutoModel else cls(config)
    return module_kinds(model, exact_linear=True)  # what lt8.hf's quantizer converts


def _kind(kinds: dict, name: str) -> tuple[str | None, str]:
    """(kind, model's module name) of a checkpoint layer name, allowing for the base-model
    prefix a checkpoint may have or lack (``bert.encoder...`` vs ``encoder...``)."""
    prefix = kinds.get("__prefix__", "")
    candidates = [name]
    if prefix:
        candidates += [f"{prefix}.{name}"]
        if name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
    for c in candidates:
        if c in kinds:
            return kinds[c], c
    return None, name


def _out_paths(src: Path, folder: Path | None, dst: Path) -> Path:
    if folder is not None:
        if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
            raise ValueError(
                f"OUT: {os.fspath(dst)!r} exists; a model folder converts into a new (or empty) "
                "folder"
            )
        return dst / OUT_WEIGHTS
    if dst.is_dir():
        dst = dst / (src.stem + ".safetensors")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"OUT must differ from IN ({os.fspath(src)!r}): convert into a new file")
    return dst


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    skip: Iterable[str] = DEFAULT_SKIP,
    threshold: float = 6.0,
    progress: bool | None = None,
    backend: str | None = None,
    model=None,
    config: str | os.PathLike | None = None,
) -> ConvertResult:
    """Converts ``src`` (a weights file or a model folder, see the module's docstring) to an
    lt8 checkpoint at ``dst`` (a file, or a folder for a folder), every Linear weight whose layer
    matches none of the ``skip`` patterns quantized to int8. ``threshold`` is recorded as the
    outlier threshold to run the layers with (quantizing does not depend on it). ``model`` (an
    ``nn.Module`` the weights belong to) or ``config`` (a transformers ``config.json``) tells
    which weights are Linear layers; a folder's own ``config.json`` is used by default.
    ``progress``: a tqdm bar (None: when stderr is a terminal). ``backend``: quantize through
    "torch" or "jax" (None: torch when installed); the bits are the same. Returns a
    :class:`ConvertResult`; nothing is written when an error is raised.
    """
    import numpy as np

    if isinstance(skip, str):
        raise TypeError(f"skip must be a list of patterns, not one string ({skip!r})")
    skip = list(skip)
    if not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    src, folder = _resolve_src(Path(src))
    dst = _out_paths(src, folder, Path(dst))

    kinds = None
    if model is not None:
        kinds = module_kinds(model)
    elif config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"config: no file at {os.fspath(config)!r}")
        kinds = kinds_from_config(Path(config))
        if kinds is None:
            raise RuntimeError("config: reading a config.json needs transformers and torch")
    elif folder is not None and (folder / "config.json").is_file():
        kinds = kinds_from_config(folder / "config.json")

    quantize = _quantizer(backend)
    result = ConvertResult(src=src, dst=dst, file_before=src.stat().st_size)
    result.structure = "model" if kinds is not None else "guessed"
    out: dict = {}
    with _open(src) as f:
        keys = list(f.keys())
        metadata = {
            k: v for k, v in (f.metadata() or {}).items() if k not in ckpt.RESERVED_METADATA
        }
        already = set(ckpt.linear_prefixes(dict.fromkeys(keys)))
        tensors = {k: f.get_tensor(k) for k in keys}
    bar = keys
    try:
        from tqdm.auto import tqdm

        bar = tqdm(
            keys,
            desc="lt8 convert",
            unit="tensor",
            file=sys.stderr,
            disable=None if progress is None else not progress,
        )
    except ImportError:
        pass
    float_linears = []  # the model's names of Linear layers left in float
    quantized_modules = set()
    for key in bar:
        a = tensors[key]
        result.bytes_before += a.nbytes
        name = _layer(key)
        if not is_linear_weight(key, a.dtype.name, a.shape) or name in already:
            out[key] = a
            continue
        bias = tensors.get(ckpt.layer_key(name, ckpt.KEY_BIAS))
        if kinds is not None:
            kind, mod_name = _kind(kinds, name)
        else:  # no structure: a bias as long as the weight's 2nd dim gives a transposed layer away
            mod_name = name
            transposed = bias is not None and bias.shape == (a.shape[1],) != (a.shape[0],)
            kind = CONV1D if transposed else LINEAR
            if transposed and not _matches(name, skip):
                raise ValueError(
                    f"{name}: weight {tuple(a.shape)} with a bias of {a.shape[1]} looks like a "
                    f"Conv1D layer (GPT-2), stored (in, out); without the model's structure lt8 "
                    f"cannot tell which other (square) weights are transposed too: convert the "
                    f"model folder (with its config.json), pass --config, or --skip such layers"
                )
        if kind not in (LINEAR, CONV1D):
            result.not_linear.append(f"{name} ({kind or 'not a module of the model'})")
            out[key] = a
            continue
        if _matches(name, skip):
            result.skipped.append(name)
            float_linears.append(mod_name)
            out[key] = a
            continue
        if a.dtype == np.float64:  # lt8's kernels take float16/bfloat16/float32
            a = a.astype(np.float32)
        if kind == CONV1D:
            a = np.ascontiguousarray(a.T)  # (in, out) -> the (out, in) of a Linear weight
            result.transposed.append(name)
        CB, SCB = quantize(a)
        quantized_modules.add(mod_name)
        out.update(ckpt.write_linear(CB, SCB, prefix=ckpt.layer_key(name, "")))
        result.quantized.append(name)
    if not result.quantized:
        raise ValueError(
            f"{src}: no Linear weight to quantize (2-D float '*.weight' tensors of Linear layers "
            f"outside the skip patterns {skip}); nothing written"
        )
    result.bytes_after = sum(a.nbytes for a in out.values())
    metadata.update({"lt8.converted_from": src.name, "lt8.skip": json.dumps(skip)})
    if folder is None:
        ckpt.save_file(out, dst, threshold=threshold, metadata=metadata)
    else:
        if kinds is not None:  # every Linear the file does not quantize (a tied head too)
            float_linears = [
                n for n, k in kinds.items() if k in (LINEAR, CONV1D) and n not in quantized_modules
            ]
        created = not dst.parent.exists()
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            ckpt.save_file(out, dst, threshold=threshold, metadata=metadata)
            _write_folder(folder, src, dst.parent, threshold, float_linears)
        except BaseException:
            import shutil

            if created:  # no half-written model folder left behind
                shutil.rmtree(dst.parent, ignore_errors=True)
            raise
    result.file_after = dst.stat().st_size
    return result


def _write_folder(folder: Path, src: Path, out: Path, threshold, float_linears) -> None:
    """OUT's folder: IN's other files (config, tokenizer, generation config, ...) copied, and
    config.json given lt8's quantization_config (the Linear layers left in float as its
    skip_modules), as ``save_pretrained`` of a converted model writes it."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    weights = set(WEIGHT_FILES) | {src.name}
    for item in folder.iterdir():
        if item.name in weights or item.name.endswith(".index.json"):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg["quantization_config"] = {
            "quant_method": "lt8",
            "threshold": float(threshold),
            "skip_modules": sorted(float_linears),
        }
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _mib(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"
    return f"{n / 2**20:.1f} MiB"


def _names(names: list, n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def report(r: ConvertResult, out=None) -> None:
    """Prints what :func:`convert_checkpoint` did: layers, bytes before and after."""
    out = out or sys.stdout
    print(f"quantized {len(r.quantized)} Linear weights to int8", file=out)
    if r.transposed:
        print(
            f"  of which {len(r.transposed)} Conv1D (stored (in, out)), quantized transposed: "
            f"{_names(r.transposed)}",
            file=out,
        )
    if r.skipped:
        print(
            f"kept in float {len(r.skipped)} skipped Linear weights: {_names(r.skipped)}", file=out
        )
    if r.not_linear:
        print(
            f"kept in float {len(r.not_linear)} 2-D weights that are not Linear layers: "
            f"{_names(r.not_linear)}",
            file=out,
        )
    if r.structure == "guessed":
        print(
            "note: no model structure (config.json / --config): every 2-D float '*.weight' not "
            "skipped was taken for a Linear weight; an embedding or other non-Linear 2-D weight "
            "among them must be --skip'ped",
            file=out,
        )
    print(
        f"tensors: {_mib(r.bytes_before)} -> {_mib(r.bytes_after)} "
        f"({r.bytes_after / max(r.bytes_before, 1):.3f}x, {r.bytes_before - r.bytes_after:,} bytes saved)",
        file=out,
    )
    print(
        f"file: {os.fspath(r.src)} ({_mib(r.file_before)}) -> {os.fspath(r.dst)} ({_mib(r.file_after)})",
        file=out,
    )


def add_arguments(p) -> None:
    """Adds ``convert``'s arguments to an argparse parser."""
    p.add_argument(
        "src",
        metavar="IN",
        help="a float checkpoint: safetensors or torch .bin file, or a model folder "
        "(config.json + model.safetensors or pytorch_model.bin)",
    )
    p.add_argument(
        "dst",
        metavar="OUT",
        help="the lt8 8-bit checkpoint to write: a new folder for a model folder, else a file",
    )
    p.add_argument(
        "--config",
        default=None,
        help="a transformers config.json telling which weights of a lone file are Linear layers",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave layers matching PATTERN (fnmatch, on the dotted name or a component) in "
        f"float; repeatable; added to the defaults {' '.join(DEFAULT_SKIP)}",
    )
    p.add_argument("--no-default-skip", action="store_true", help="drop the default skip patterns")
    p.add_argument(
        "--threshold",
        type=float,
        default=6.0,
        help="outlier threshold recorded in the checkpoint (default 6.0)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args) -> int:
    """Runs ``convert`` from parsed arguments; errors are printed, not raised (exit code 1)."""
    skip = ([] if args.no_default_skip else list(DEFAULT_SKIP)) + list(args.skip)
    try:
        r = convert_checkpoint(
            args.src,
            args.dst,
            skip=skip,
            threshold=args.threshold,
            progress=False if args.no_progress else None,
            config=args.config,
        )
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        print(f"lt8 convert: error: {err}", file=sys.stderr)
        return 1
    report(r)
    return 0

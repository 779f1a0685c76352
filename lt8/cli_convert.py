"""``lt8 convert IN OUT``: a float safetensors checkpoint's Linear weights to lt8's 8-bit format.

Every tensor that looks like a Linear weight, a 2-D float tensor named ``*.weight`` (or
``weight``) whose layer name matches no skip pattern, is quantized row-wise with lt8's own
kernel (the same bits ``Int8Params``/``replace_linear`` and ``lt8.jax.quantize_weight`` give) and
stored under :mod:`lt8.core.checkpoint`'s keys: ``P.weight`` int8 (out, in), ``P.SCB`` float32
(out,), ``P.weight_format`` = 0. Every other tensor is copied as it is. The result loads with
``lt8.torch.load_quantized`` into a model whose Linear layers went through ``replace_linear``,
and with ``lt8.jax.load_variables``.

Skip patterns (``fnmatch``) are matched against a layer's dotted name and each component of it;
the defaults (:data:`DEFAULT_SKIP`) keep output heads and embedding tables in float. A weight
stored as (in, out), like GPT-2's ``Conv1D``, cannot be told apart from a Linear weight by its
shape: skip such layers here and convert the model with ``lt8.hf.convert_hf_model`` instead.
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
    skipped: list = field(default_factory=list)  # 2-D float *.weight layers left in float
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
        and dtype_name in ckpt._FLOAT_DTYPES
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


def _resolve_src(src: Path) -> Path:
    if src.is_dir():
        if (src / "model.safetensors.index.json").is_file() and not (
            src / "model.safetensors"
        ).is_file():
            raise ValueError(
                f"{src}: a sharded checkpoint (model.safetensors.index.json): convert each "
                f"shard file on its own"
            )
        src = src / "model.safetensors"
    if not src.is_file():
        raise FileNotFoundError(f"IN: no safetensors file at {os.fspath(src)!r}")
    return src


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    skip: Iterable[str] = DEFAULT_SKIP,
    threshold: float = 6.0,
    progress: bool | None = None,
    backend: str | None = None,
) -> ConvertResult:
    """Writes ``src``'s tensors to ``dst`` (an lt8 checkpoint) with every Linear weight (see
    :func:`is_linear_weight`) whose layer matches none of the ``skip`` patterns quantized to
    int8. ``src`` may be a folder holding ``model.safetensors``; ``dst`` may be a folder (the
    file keeps ``src``'s name). ``threshold`` is recorded in the metadata as the outlier
    threshold to run the layers with (quantizing the weights does not depend on it).
    ``progress``: a tqdm bar (None: when stderr is a terminal). ``backend``: quantize through
    "torch" or "jax" (None: torch when installed); the bits are the same. Returns a
    :class:`ConvertResult`.
    """
    import numpy as np
    from safetensors import SafetensorError, safe_open

    if isinstance(skip, str):
        raise TypeError(f"skip must be a list of patterns, not one string ({skip!r})")
    skip = list(skip)
    if not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    src = _resolve_src(Path(src))
    dst = Path(dst)
    if dst.is_dir():
        dst = dst / src.name
    if dst.resolve() == src.resolve():
        raise ValueError(f"OUT must differ from IN ({os.fspath(src)!r}): convert into a new file")

    quantize = _quantizer(backend)
    result = ConvertResult(src=src, dst=dst, file_before=src.stat().st_size)
    out: dict = {}
    try:
        f = safe_open(os.fspath(src), framework="np")
    except SafetensorError as e:
        raise ckpt.CheckpointError(f"{src}: not a readable safetensors file: {e}") from None
    with f:
        keys = list(f.keys())
        metadata = {
            k: v for k, v in (f.metadata() or {}).items() if k not in ckpt._RESERVED_METADATA
        }
        already = set(ckpt.linear_prefixes(dict.fromkeys(keys)))
        bar = keys
        try:
            from tqdm.auto import tqdm

            bar = tqdm(
                keys,
                desc="lt8 convert",
                unit="tensor",
                disable=None if progress is None else not progress,
                file=sys.stderr,
            )
        except ImportError:
            pass
        for key in bar:
            a = f.get_tensor(key)
            result.bytes_before += a.nbytes
            name = _layer(key)
            if not is_linear_weight(key, a.dtype.name, a.shape) or name in already:
                out[key] = a
                continue
            if _matches(name, skip):
                result.skipped.append(name)
                out[key] = a
                continue
            if a.dtype == np.float64:  # lt8's kernels take float16/bfloat16/float32
                a = a.astype(np.float32)
            CB, SCB = quantize(a)
            out.update(ckpt.write_linear(CB, SCB, prefix=ckpt._key(name, "")))
            result.quantized.append(name)
    if not result.quantized:
        raise ValueError(
            f"{src}: no Linear weight to quantize (2-D float '*.weight' tensors outside the "
            f"skip patterns {skip}); nothing written"
        )
    result.bytes_after = sum(a.nbytes for a in out.values())
    metadata.update({"lt8.converted_from": src.name, "lt8.skip": json.dumps(skip)})
    ckpt.save_file(out, dst, threshold=threshold, metadata=metadata)
    result.file_after = dst.stat().st_size
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def report(r: ConvertResult, out=None) -> None:
    """Prints what :func:`convert_checkpoint` did: layers, bytes before and after."""
    out = out or sys.stdout
    shown = ", ".join(r.skipped[:6]) + (
        f", ... ({len(r.skipped)} in all)" if len(r.skipped) > 6 else ""
    )
    print(f"quantized {len(r.quantized)} Linear weights to int8", file=out)
    print(
        f"kept in float {len(r.skipped)} skipped 2-D weights{': ' + shown if r.skipped else ''}",
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
        help="a float safetensors checkpoint (or a folder with model.safetensors)",
    )
    p.add_argument("dst", metavar="OUT", help="the lt8 8-bit checkpoint to write (or a folder)")
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
        )
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        print(f"lt8 convert: error: {err}", file=sys.stderr)
        return 1
    report(r)
    return 0

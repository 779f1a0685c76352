"""How lt8.core, which imports no framework, reads and makes framework arrays.

numpy is lt8.core's array type. A frontend registers its own array type here when it is
imported (``lt8.torch`` registers ``torch.Tensor``, ``lt8.jax`` registers ``jax.Array``), with
its two conversions, so that the framework-neutral code (the checkpoint format, the layout
helpers) accepts and returns that framework's arrays without importing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ArrayLibrary",
    "from_numpy",
    "has_library",
    "library_of",
    "register_array_library",
    "to_numpy",
]


@dataclass(frozen=True)
class ArrayLibrary:
    """A framework's array type and its conversions to and from numpy.

    Attributes:
        name: the library's name, as ``like`` arguments spell it ("torch", "jax").
        array_type: the type (or base type) of its arrays.
        to_numpy: array -> numpy array on the host, any dtype and device (bfloat16 as
            ``ml_dtypes.bfloat16``).
        from_numpy: ``(numpy array, like)`` -> an array of this library; ``like`` is an array of
            it (whose device the result takes) or None.
    """

    name: str
    array_type: type
    to_numpy: Callable[[Any], np.ndarray]
    from_numpy: Callable[[np.ndarray, Any], Any]


_LIBRARIES: dict[str, ArrayLibrary] = {}


def register_array_library(
    name: str,
    array_type: type,
    to_numpy: Callable[[Any], np.ndarray],
    from_numpy: Callable[[np.ndarray, Any], Any],
) -> None:
    """Registers a framework's arrays (see :class:`ArrayLibrary`); a frontend calls this once,
    when it is imported. Registering a name again replaces the entry."""
    _LIBRARIES[name] = ArrayLibrary(name, array_type, to_numpy, from_numpy)


def has_library(name: str) -> bool:
    """Whether the library ``name`` ("torch", "jax") is registered (its lt8 frontend imported)."""
    return name in _LIBRARIES


def library_of(a: Any) -> str:
    """The name of the registered library whose array ``a`` is, else "numpy"."""
    for lib in _LIBRARIES.values():
        if isinstance(a, lib.array_type):
            return lib.name
    return "numpy"


def _library(name: str) -> ArrayLibrary:
    try:
        return _LIBRARIES[name]
    except KeyError:
        raise ValueError(
            f"no array library {name!r} is registered (known: numpy"
            f"{''.join(', ' + n for n in _LIBRARIES)}); import lt8.{name} first, which "
            "registers it"
        ) from None


def to_numpy(a: Any) -> np.ndarray:
    """``a`` as a numpy array: an array of a registered library (any device and dtype), or
    anything ``numpy.asarray`` reads (numpy arrays, scalars, jax arrays)."""
    name = library_of(a)
    if name != "numpy":
        return _LIBRARIES[name].to_numpy(a)
    try:
        return np.asarray(a)
    except (TypeError, RuntimeError, ValueError) as e:
        raise TypeError(
            f"cannot read a {type(a).__name__} as a numpy array ({e}); for torch tensors, "
            "import lt8.torch first (it registers torch's conversion)"
        ) from None


def from_numpy(a: np.ndarray, like: Any = "numpy") -> Any:
    """``a`` as an array of ``like``'s library: ``like`` is an array (the result takes its
    library and device) or a library name ("numpy" or a registered one)."""
    if isinstance(like, str):
        return a if like == "numpy" else _library(like).from_numpy(a, None)
    name = library_of(like)
    return a if name == "numpy" else _LIBRARIES[name].from_numpy(a, like)

"""torch modules: ``Int8Params``, ``Linear8bitLt`` (a drop-in for bitsandbytes') and
``replace_linear`` to convert whole models. Whole-model checkpoints (``save_quantized``,
``load_quantized``) are :mod:`lt8.torch.checkpoint`'s."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

import lt8.torch._kernels  # noqa: F401  (registers the kernels)
from lt8.core import checkpoint as ckpt
from lt8.torch import _fastpath
from lt8.torch._ops import as_threshold
from lt8.torch.autograd import MatmulLtState, _MatMulFp16Weight

__all__ = ["Int8Params", "Linear8bitLt", "replace_linear"]


def __getattr__(name: str):
    # save_quantized / load_quantized lived here before lt8.torch.checkpoint: old imports work.
    if name in ("save_quantized", "load_quantized"):
        from lt8.torch import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _float_weight(W: torch.Tensor, name: str, device: torch.device | None = None) -> torch.Tensor:
    """A floating-point weight ready for row-wise quantization on ``device``: contiguous, and
    float64 rounded to float32 (the int8 rows and float32 scales keep less than float32)."""
    if not W.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point weight to quantize (float32, float16, "
            f"bfloat16 or float64), got {W.dtype}"
        )
    dtype = torch.float32 if W.dtype == torch.float64 else None
    return W.to(device=device, dtype=dtype).contiguous()


def _rebuild_int8_params(data, requires_grad, has_fp16_weights, SCB):
    return Int8Params(data, requires_grad=requires_grad, has_fp16_weights=has_fp16_weights, SCB=SCB)


class Int8Params(nn.Parameter):
    """A weight that quantizes itself to int8 when it is moved to a device.

    With ``has_fp16_weights=False``, the first move (``.cuda()``, ``.to(device)``, and on the CPU
    ``.to("cpu")`` / ``.cpu()``) replaces the floating-point data by its row-wise int8
    quantization: afterwards ``data`` is the int8 (out, in) matrix ``CB`` and ``SCB`` holds the
    float32 absmax of each row. ``.to(dtype)`` alone never quantizes. With
    ``has_fp16_weights=True`` the parameter stays a floating-point master weight.
    """

    def __new__(
        cls,
        data: torch.Tensor | None = None,
        requires_grad: bool = True,
        has_fp16_weights: bool = False,
        CB: torch.Tensor | None = None,
        SCB: torch.Tensor | None = None,
    ):
        if data is None:
            data = torch.empty(0)
        if data.dtype == torch.int8:
            requires_grad = False  # integer tensors cannot require gradients
        obj = torch.Tensor._make_subclass(cls, data, requires_grad)
        obj.has_fp16_weights = has_fp16_weights
        obj.SCB = SCB
        if CB is not None and CB is not data:
            raise ValueError("CB must be the parameter's own data (lt8 keeps one int8 copy)")
        return obj

    @property
    def CB(self) -> torch.Tensor | None:
        """The int8 weight (the parameter's data itself) once quantized, else None."""
        return self.data if self.data.dtype == torch.int8 and self.SCB is not None else None

    @CB.setter
    def CB(self, value):  # bitsandbytes code assigns CB; lt8 derives it from data
        if value is not None and value is not self.data:
            self.data = value

    def _quantize(self, device: torch.device) -> Int8Params:
        CB, SCB, _ = torch.ops.lt8.quantize_rows(_float_weight(self.data, "weight", device), 0.0)
        self.requires_grad_(False)
        self.data = CB
        self.SCB = SCB
        return self

    def to(self, *args, **kwargs):
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if (
            device is not None
            and device.type != "meta"
            and not self.has_fp16_weights
            and self.data.dtype != torch.int8
        ):
            return self._quantize(device)
        if self.data.dtype == torch.int8:
            dtype = None  # .to(dtype) never dequantizes an int8 weight
        moved = super().to(device=device, dtype=dtype, non_blocking=non_blocking)
        SCB = (
            self.SCB
            if self.SCB is None or device is None
            else self.SCB.to(device, non_blocking=non_blocking)
        )
        return Int8Params(
            moved, requires_grad=self.requires_grad, has_fp16_weights=self.has_fp16_weights, SCB=SCB
        )

    def cuda(self, device=None, non_blocking: bool = False):
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def cpu(self):
        return self.to(device="cpu")

    def __reduce_ex__(self, proto):
        return (
            _rebuild_int8_params,
            (self.data, self.requires_grad, self.has_fp16_weights, self.SCB),
        )

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        SCB = None if self.SCB is None else self.SCB.clone()
        result = Int8Params(
            self.data.clone(),
            requires_grad=self.requires_grad,
            has_fp16_weights=self.has_fp16_weights,
            SCB=SCB,
        )
        memo[id(self)] = result
        return result

    def __repr__(self) -> str:
        kind = "int8" if self.CB is not None else str(self.data.dtype)
        return f"Int8Params({kind}, shape={tuple(self.shape)}, has_fp16_weights={self.has_fp16_weights})"


class Linear8bitLt(nn.Linear):
    """LLM.int8() linear layer with bitsandbytes' constructor, state and checkpoint keys.

    Args:
        input_features, output_features, bias: as ``nn.Linear``.
        has_fp16_weights: keep a floating-point master weight (training); when False the weight
            is quantized to int8 on its first move to a device and stays int8 (inference and
            adapter fine-tuning, about half of fp16's memory).
        memory_efficient_backward: accepted for compatibility (lt8's backward never stores a
            dequantized weight).
        threshold: activation magnitude at or above which a column is an outlier handled in
            higher precision; 0 disables the decomposition (6.0 is the paper's choice).
        index, device: as bitsandbytes.

    The defaults are bitsandbytes' (``has_fp16_weights=True``, ``threshold=0.0``): a layer
    built with them keeps a float weight, and ``.to(device)`` leaves it float. For int8
    weights pass ``has_fp16_weights=False`` (``replace_linear`` does); ``repr`` shows which
    kind of weight a layer holds. An int8 layer called before its first move to a device
    quantizes its float weight again on every call (it warns once): move it first.

    Example::

        >>> import torch, lt8
        >>> fp = torch.nn.Linear(64, 32)
        >>> q = lt8.nn.Linear8bitLt(64, 32, has_fp16_weights=False, threshold=6.0)
        >>> q.weight = lt8.nn.Int8Params(fp.weight.data.clone(), requires_grad=False)
        >>> q.bias = fp.bias
        >>> q = q.to("cpu")  # quantizes; use .cuda() on a GPU
        >>> x = torch.randn(4, 64)
        >>> bool(((q(x) - fp(x)).abs().max() < 0.05))
        True
    """

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias: bool = True,
        has_fp16_weights: bool = True,
        memory_efficient_backward: bool = False,
        threshold: float = 0.0,
        index=None,
        device=None,
    ):
        super().__init__(input_features, output_features, bias, device=device)
        threshold = as_threshold(threshold)
        self.state = MatmulLtState(
            threshold=threshold,
            has_fp16_weights=has_fp16_weights,
            memory_efficient_backward=memory_efficient_backward,
        )
        self.index = index
        self.weight = Int8Params(
            self.weight.data, has_fp16_weights=has_fp16_weights, requires_grad=has_fp16_weights
        )

    # -- state bookkeeping: MatmulLtState mirrors the weight, it never owns tensors -----------

    def _sync_state(self) -> None:
        w = self.__dict__.get("_parameters", {}).get("weight")
        if w is None or not hasattr(self, "state"):
            return
        self.state.CB = getattr(w, "CB", None)
        self.state.SCB = getattr(w, "SCB", None)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "weight":
            self._sync_state()

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        # nn.Module._apply keeps the Parameter object and swaps its .data, so the scales that
        # Int8Params.to() moved on its returned copy must follow here. They stay float32 even
        # under .half(): only their device changes.
        w = self._parameters.get("weight")
        if isinstance(w, Int8Params) and w.SCB is not None and w.SCB.device != w.device:
            w.SCB = w.SCB.to(w.device)
        self._sync_state()
        return result

    def __getstate__(self):  # pickle / deepcopy: the fast-path cache holds weak references
        state = dict(self.__dict__)
        state.pop("_prepared", None)
        return state

    def train(self, mode: bool = True):
        self.state.is_training = mode
        return super().train(mode)

    # -- forward ----------------------------------------------------------------------------

    def _int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight
        if w.dtype == torch.int8:
            if w.SCB is None:
                raise RuntimeError(
                    "Linear8bitLt has an int8 weight without scales (SCB); load a checkpoint with SCB"
                )
            return w, w.SCB
        # Not quantized yet (never moved to a device): quantize for this call only. A cache
        # could not see in-place edits made through ``weight.data``, so say what it costs.
        warnings.warn(
            "Linear8bitLt(has_fp16_weights=False) called before its first move to a device: its "
            "float weight is quantized again on every call (slow). Move the layer first "
            "(.to('cpu') on a CPU, .cuda() on a GPU) to quantize it once.",
            stacklevel=2,
        )
        CB, SCB, _ = torch.ops.lt8.quantize_rows(_float_weight(w.detach(), "weight"), 0.0)
        return CB, SCB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.state
        if st.has_fp16_weights:
            return _MatMulFp16Weight.apply(
                x, self.weight, self.bias, st.threshold, st.force_no_igemmlt
            )
        CB, SCB = self._int8_weight()
        if st.force_no_igemmlt:
            # bitsandbytes' int8-weight-only path: x stays in its dtype, W is dequantized on the fly.
            return torch.ops.lt8.int8_weight_linear(x, CB, SCB, self.bias)
        bias = self.bias
        if _fastpath.eligible(x, bias):  # inference: skip the dispatcher (see _fastpath)
            prepared = self.__dict__.get("_prepared")
            if prepared is None or not prepared.matches(CB, SCB, bias):
                prepared = None
                if _fastpath.PreparedWeight.usable(CB, SCB, bias):
                    prepared = _fastpath.PreparedWeight(CB, SCB, bias)
                self.__dict__["_prepared"] = prepared  # a cache of weak references, not state
            if prepared is not None:
                return prepared.linear(x, st.threshold)
        return torch.ops.lt8.int8_linear(x, CB, SCB, self.bias, st.threshold)

    # -- checkpoints (bitsandbytes' keys: weight row-major int8, SCB, weight_format) ----------

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        SCB = self.weight.SCB
        if not self.state.has_fp16_weights and SCB is not None:
            _, sk, _, fk = ckpt.linear_keys(prefix)
            destination[sk] = SCB if keep_vars else SCB.detach()
            destination[fk] = torch.tensor(ckpt.WEIGHT_FORMATS["row"], dtype=torch.uint8)

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """As ``nn.Module.load_state_dict``, and atomic for this layer: every key, shape and
        dtype is checked before anything is copied, so a checkpoint that raises leaves the layer
        exactly as it was. (A model's ``load_state_dict`` copies module after module, as torch
        does: use :func:`lt8.torch.load_quantized` for whole models.)

        Accepted: an 8-bit checkpoint (``weight`` int8 with ``SCB`` and optionally
        ``weight_format``, bitsandbytes' keys; the layer must be quantized already) or a float
        one (``weight``, quantized on the way in when the layer is)."""
        if strict:
            optional = {ckpt.KEY_SCB, ckpt.KEY_FORMAT}
            own = set(self.state_dict(keep_vars=True))
            missing = sorted(own - optional - set(state_dict))
            unexpected = sorted(set(state_dict) - own - optional)
            problems = []
            if missing:
                problems.append(
                    "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + "."
                )
            if unexpected:
                problems.append(
                    "Unexpected key(s) in state_dict: "
                    + ", ".join(f'"{k}"' for k in unexpected)
                    + "."
                )
            if problems:
                raise RuntimeError(
                    f"Error(s) in loading state_dict for {type(self).__name__} (nothing was "
                    "loaded):\n\t" + "\n\t".join(problems)
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        w_key, scb_key, _, fmt_key = ckpt.linear_keys(prefix)
        # Everything this layer takes is checked before anything is copied (a RuntimeError
        # naming the key), so a bad checkpoint leaves the layer as it was.
        fmt = self._check_state_dict(state_dict, prefix)
        incoming = state_dict
        if scb_key in state_dict:
            CB = state_dict[w_key]
            if fmt != "row":
                out_f, in_f = self.weight.shape
                CB = torch.ops.lt8.transform_layout(
                    CB.to(self.weight.device), out_f, in_f, fmt, "row"
                )
            incoming = dict(state_dict)
            incoming[w_key] = CB
        elif w_key in state_dict and self.weight.dtype == torch.int8:
            # A floating-point checkpoint loaded into a quantized layer: quantize it on the way in.
            W = _float_weight(state_dict[w_key], w_key, self.weight.device)
            CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
            incoming = dict(state_dict)
            incoming[w_key], incoming[scb_key] = CB, SCB
        if scb_key in incoming and local_metadata.get("assign_to_params_buffers", False):
            # load_state_dict(assign=True) installs the incoming tensor itself: keep it an Int8Params.
            incoming[w_key] = Int8Params(
                incoming[w_key],
                requires_grad=False,
                has_fp16_weights=False,
                SCB=incoming[scb_key].to(torch.float32),
            )
        n_errors = len(error_msgs)
        super()._load_from_state_dict(
            incoming, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for key in (scb_key, fmt_key):
            if key in unexpected_keys:
                unexpected_keys.remove(key)
        if scb_key in incoming and len(error_msgs) == n_errors:
            with torch.no_grad():
                self.weight.SCB.copy_(incoming[scb_key])
        self._sync_state()

    def _check_state_dict(self, sd: Mapping[str, torch.Tensor], prefix: str) -> str | None:
        """Checks what this layer would take from ``sd`` before anything is copied, so a bad
        checkpoint changes nothing; returns the int8 weight's layout name (None for a float
        checkpoint or none at all). The checkpoint's rules are lt8.core.checkpoint's
        (:func:`~lt8.core.checkpoint.validate_linear` for an 8-bit checkpoint,
        :func:`~lt8.core.checkpoint.validate_float_linear` for a float one); this layer adds
        only its own state. Raises a RuntimeError naming the key, as torch's loaders do."""
        w_key, scb_key, _, _ = ckpt.linear_keys(prefix)
        out_f, in_f = self.out_features, self.in_features
        try:
            if scb_key in sd:
                if self.weight.dtype != torch.int8 or self.weight.SCB is None:
                    if self.state.has_fp16_weights:
                        raise RuntimeError(
                            f"{scb_key}: an 8-bit (int8) checkpoint cannot be loaded into a "
                            "Linear8bitLt that keeps a floating-point master weight "
                            "(has_fp16_weights=True): create it with has_fp16_weights=False "
                            "and move it to its device first"
                        )
                    raise RuntimeError(
                        "Loading a quantized (int8) checkpoint into a Linear8bitLt that has not "
                        "been quantized yet is not supported: move the module to its device "
                        "first (module.cuda(), module.to(device) or, on the CPU, "
                        "module.to('cpu')), then call load_state_dict."
                    )
                return ckpt.validate_linear(sd, prefix, out_f, in_f)
            if w_key in sd:
                ckpt.validate_float_linear(sd, prefix, out_f, in_f)
        except ckpt.CheckpointError as e:
            raise RuntimeError(str(e)) from None
        return None

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, threshold={self.state.threshold}, "
            f"has_fp16_weights={self.state.has_fp16_weights}, weight={self._weight_kind()}"
        )

    def _weight_kind(self) -> str:
        w = self.weight
        if w.dtype == torch.int8:
            return "int8"
        if self.state.has_fp16_weights:
            return f"{str(w.dtype).removeprefix('torch.')} (not quantized: has_fp16_weights=True)"
        return f"{str(w.dtype).removeprefix('torch.')} (quantized on the first .to(device))"


def replace_linear(
    model: nn.Module,
    threshold: float = 6.0,
    skip_modules: Iterable[str] = ("lm_head",),
    has_fp16_weights: bool = False,
    progress: bool | None = None,
) -> nn.Module:
    """Swaps every ``nn.Linear`` of ``model`` (in place) for a ``Linear8bitLt``.

    Modules whose name, or any dotted component of it, is in ``skip_modules`` are left as they
    are (by default the language-model head). Weights are quantized on the device they are on,
    so converting a model on the GPU never materialises an fp32 copy on the host. A progress
    bar is shown for models with many layers (``progress=None``) when tqdm is installed.
    Returns the model.
    """
    skip = set(skip_modules)
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and not isinstance(mod, Linear8bitLt)
        and name not in skip
        and not (skip & set(name.split(".")))
    ]
    if progress is None:
        progress = len(targets) >= 64
    iterator = targets
    if progress:
        try:
            from tqdm.auto import tqdm

            iterator = tqdm(targets, desc="lt8: quantizing Linear layers", unit="layer")
        except ImportError:
            pass
    for name, mod in iterator:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = Linear8bitLt(
            mod.in_features,
            mod.out_features,
            mod.bias is not None,
            has_fp16_weights=has_fp16_weights,
            threshold=threshold,
            device="meta",
        )
        weight = Int8Params(
            mod.weight.data, requires_grad=has_fp16_weights, has_fp16_weights=has_fp16_weights
        )
        if not has_fp16_weights:
            weight = weight._quantize(mod.weight.device)
        new.weight = weight
        if mod.bias is not None:
            new.bias = nn.Parameter(mod.bias.data, requires_grad=mod.bias.requires_grad)
        new.train(mod.training)
        setattr(parent, child, new)
    return model

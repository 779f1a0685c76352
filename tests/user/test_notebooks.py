"""The Colab notebooks in notebooks/: published with their outputs, and they run top to bottom.

The committed notebooks carry the outputs and figures of an execution (scripts/make_notebooks.py
writes them so), which must be complete and successful; their code must be what the generator
writes today. Each notebook is then executed again here with nbclient in a fresh ipykernel
running this interpreter (``sys.executable``, so the kernel sees the same installation of lt8),
in a temporary working directory, without its Colab install cell (tagged ``colab-install``): the
checks are on this run's results, not the stored bytes. The notebooks end with a cell of
assertions that prints "all checks passed": a notebook whose numbers go wrong fails here, not
only one that raises. ``LT8_NOTEBOOKS_OUT=<dir>`` keeps the executed notebooks there.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install lt8[notebooks]")

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "make_notebooks", ROOT / "scripts" / "make_notebooks.py"
)
make_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebooks)

NOTEBOOK_DIR = make_notebooks.NOTEBOOK_DIR
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = set(make_notebooks.NOTEBOOKS)
INSTALL_TAG = make_notebooks.INSTALL_TAG
CELL_TIMEOUT_S = 600
SENTINEL = make_notebooks.SENTINEL
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


def _stdout(cell) -> str:
    texts = [o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout"]
    return "".join("".join(t) if isinstance(t, list) else t for t in texts)  # json: lists of lines


def _images(cells) -> list:
    return [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def test_all_notebooks_present():
    assert EXPECTED == {p.name for p in NOTEBOOKS}, f"notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_committed_notebook_is_current_and_installs_from_the_wheel_index(path):
    """Valid nbformat v4, the generator's code, a Colab badge for its own path and one install
    cell that installs lt8 from the configured wheel index (make_notebooks.WHEEL_INDEX)."""
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    fresh = make_notebooks.build(path.name)
    assert [(c.cell_type, _source(c)) for c in nb.cells] == [
        (c.cell_type, _source(c)) for c in fresh.cells
    ], "notebook differs from scripts/make_notebooks.py: regenerate it"

    cells = nb.cells
    first = _source(cells[0])
    assert "colab-badge.svg" in first and make_notebooks.colab_url(path.name) in first
    assert "placeholder" in first, "the first cell must say that the GitHub owner is a placeholder"

    code_cells = [c for c in cells if c.cell_type == "code"]
    install = [c for c in code_cells if INSTALL_TAG in _tags(c)]
    assert len(install) == 1 and code_cells[0] is install[0], "one install cell, the first"
    src = _source(install[0])
    assert f"--index-url {make_notebooks.WHEEL_INDEX}/$variant lt8" in src
    assert "git+" not in src and "--no-build-isolation" not in src  # a wheel, not a build
    # Nothing else may install or shell out: the rest must run as it is on a CPU and a GPU runtime.
    for c in code_cells[1:]:
        assert "pip install" not in _source(c) and not _source(c).startswith("%%bash")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_committed_notebook_carries_a_complete_run(path):
    """Published with outputs: every cell but the install cell ran, in order, in one session,
    without errors; the checks cell printed the sentinel; the figures are there."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    ran = [c for c in code_cells if INSTALL_TAG not in _tags(c)]
    assert code_cells[0]["outputs"] == [] and code_cells[0]["execution_count"] is None
    counts = [c["execution_count"] for c in ran]
    assert counts == list(range(1, len(ran) + 1)), f"not one top-to-bottom run: {counts}"
    assert not [o for c in ran for o in c["outputs"] if o["output_type"] == "error"]
    assert SENTINEL in _stdout(ran[-1]) and "assert" in _source(ran[-1])
    if "matplotlib" in NEEDS[path.name]:
        assert _images(ran), f"{path.name} was committed without its figures"


# --- execution ----------------------------------------------------------------------------------


def _import_or_skip(name: str, hint: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # missing, or installed but broken: either way the notebook cannot run
        pytest.skip(f"needs {name} ({hint}): {e}")


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_runs(path, tmp_path):
    nbclient = _import_or_skip("nbclient", "pip install lt8[notebooks]")
    _import_or_skip("ipykernel", "pip install lt8[notebooks]")
    for mod in NEEDS.get(path.name, ()):
        _import_or_skip(mod, f"{path.name} needs it")

    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:  # run from scratch: nothing of the stored run may count
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    workdir = tmp_path / "work"
    workdir.mkdir()
    start = time.perf_counter()
    try:
        make_notebooks.execute(nb, workdir, timeout=CELL_TIMEOUT_S)
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
    finally:
        elapsed = time.perf_counter() - start
        if os.environ.get("LT8_NOTEBOOKS_OUT"):  # keep the executed notebook, for a look at it
            out = Path(os.environ["LT8_NOTEBOOKS_OUT"])
            out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / path.name)

    code_cells = [c for c in nb.cells if c.cell_type == "code" and INSTALL_TAG not in _tags(c)]
    assert all(c.execution_count is not None for c in code_cells), "not every cell ran"
    assert SENTINEL in _stdout(code_cells[-1])
    errors = [
        o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    if "matplotlib" in NEEDS.get(path.name, ()):
        assert _images(code_cells), f"{path.name} drew no figure"
    print(f"{path.name}: {elapsed:.1f} s")

"""The wheel build configuration: cibuildwheel's section of pyproject.toml, the workflow that
runs it in two variants (cpu, cu12 with CUDA kernels for sm_75..sm_90), and the package index it
publishes, which the notebooks' install cell (scripts/make_notebooks.py's WHEEL_INDEX) reads.
Building the wheels themselves needs Docker and CI time; these checks are what a CPU test can
hold them to.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_cibuildwheel_builds_manylinux_cpu_by_default():
    cfg = _pyproject()["tool"]["cibuildwheel"]
    assert {"cp310-*", "cp311-*", "cp312-*", "cp313-*"} <= set(cfg["build"])
    assert "*-musllinux_*" in cfg["skip"] and cfg["archs"] == ["x86_64"]
    assert "check_wheel.py" in cfg["test-command"]
    assert (ROOT / ".github" / "scripts" / "check_wheel.py").is_file()
    linux = cfg["linux"]
    # CPU-only, and lt8's own CPU thread pool: a wheel's vendored libgomp could not be torch's.
    assert linux["manylinux-x86_64-image"].startswith("manylinux") and linux["environment"] == {
        "LT8_CUDA": "OFF",
        "LT8_OPENMP": "OFF",
    }


def test_workflow_builds_both_variants_and_publishes_the_notebooks_index():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load(WORKFLOW.read_text())
    matrix = {m["variant"]: m for m in wf["jobs"]["build"]["strategy"]["matrix"]["include"]}
    assert set(matrix) == {"cpu", "cu12"}
    assert matrix["cpu"]["environment"] == "LT8_CUDA=OFF LT8_OPENMP=OFF"
    cuda_env = matrix["cu12"]["environment"]
    assert "LT8_CUDA=ON" in cuda_env and 'LT8_CUDA_ARCHS="75;80;86;89;90"' in cuda_env
    assert "LT8_OPENMP=OFF" in cuda_env
    # the CUDA wheels carry Hopper's CUTLASS GEMMs (check_wheel.py asserts it from this variable)
    assert "LT8_CUTLASS_INCLUDE=/opt/cutlass/" in cuda_env
    assert "nvidia-cutlass==" in matrix["cu12"]["before_all"]
    assert "install-cuda-toolkit.sh" in matrix["cu12"]["before_all"]
    assert (ROOT / ".github" / "scripts" / "install-cuda-toolkit.sh").is_file()
    steps = " ".join(str(s) for s in wf["jobs"]["publish"]["steps"])
    assert "make_index.py site cpu=dist/wheels-cpu cu12=dist/wheels-cu12" in steps
    # the notebooks install from <owner>.github.io/lt8/whl/<variant>, what Pages serves from site/
    import importlib.util

    spec = importlib.util.spec_from_file_location("mk", ROOT / "scripts" / "make_notebooks.py")
    pytest.importorskip("nbformat")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    assert re.fullmatch(rf"https://{mk.ORG}\.github\.io/lt8/whl", mk.WHEEL_INDEX)
    assert "variant=cu12" in mk.INSTALL and "variant=cpu" in mk.INSTALL


def test_make_index_writes_a_pep503_index(tmp_path):
    wheels = tmp_path / "w"
    wheels.mkdir()
    names = [
        "lt8-0.1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "lt8-0.1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
    ]
    for i, n in enumerate(names):
        (wheels / n).write_bytes(bytes([i]) * 100)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / ".github" / "scripts" / "make_index.py"),
            str(site),
            f"cu12={wheels}",
        ],
        check=True,
        capture_output=True,
    )
    assert 'href="lt8/"' in (site / "whl" / "cu12" / "index.html").read_text()
    page = (site / "whl" / "cu12" / "lt8" / "index.html").read_text()
    for i, n in enumerate(names):
        digest = hashlib.sha256(bytes([i]) * 100).hexdigest()
        assert f'href="{n}#sha256={digest}"' in page
        assert (site / "whl" / "cu12" / "lt8" / n).read_bytes() == bytes([i]) * 100

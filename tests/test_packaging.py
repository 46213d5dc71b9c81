"""The wheel installs only under sammed_edge/, and the installed (not the editable) package imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_layout_and_import(tmp_path):
    # build from a clean copy: setuptools leaves build/ in the source tree, which must not leak into the checkout
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "out", "build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, text=True,
    )
    wheel = next((tmp_path / "dist").glob("sammed_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"sammed_edge", next(n for n in top_level if n.endswith(".dist-info"))}, top_level
    # every module of the four parts ships (a subpackage missing from pyproject's list would be left out silently)
    sources = {f"sammed_edge/{path.relative_to(REPO).as_posix()}" for part in ("export", "runtime", "kernels", "demo")
               for path in (REPO / part).rglob("*.py") if "__pycache__" not in path.parts}
    assert sorted(sources - set(names)) == []
    # and so do the trained weights, with their provenance
    weights = {f"sammed_edge/export/weights/{path.name}" for path in (REPO / "export" / "weights").iterdir()}
    assert weights and sorted(weights - set(names)) == []

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
                    "--target", str(target), str(wheel)], check=True, capture_output=True, text=True)
    assert not (target / "runtime").exists() and not (target / "export").exists()
    probe = "import sammed_edge.runtime.processing as p, sammed_edge.export.models as m; print(p.__file__); print(m.__file__)"
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    for line in out.stdout.split():
        assert Path(line).is_relative_to(target), f"imported {line} instead of the installed wheel"

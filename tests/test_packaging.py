"""Packaging: ``passes/`` is importable as ``growc.passes`` from an editable install and from a built wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_installed_package_maps_passes_folder(tmp_path: Path) -> None:
    probe = (
        "import growc.passes, growc; print(growc.passes.__file__); print(growc.passes.templatize is growc.templatize)"
    )
    result = _run([sys.executable, "-c", probe], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where, same = result.stdout.split()
    assert Path(where).parent.name == "passes" and same == "True"


@pytest.mark.slow
def test_built_wheel_contains_and_imports_growc_passes(tmp_path: Path) -> None:
    source = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info into the source tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__"))
    build = _run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("growc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "growc/passes/__init__.py",
        "growc/passes/templatize.py",
        "growc/passes/materialize.py",
        "growc/testing/plugin.py",
        "growc/cli.py",
    ):
        assert expected in names
    assert not [n for n in names if n.startswith("passes/")]  # mapped into the package, not a top-level package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "growc = growc.cli:main" in text and "growc = growc.testing.plugin" in text
    site = tmp_path / "site"
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path)
    assert install.returncode == 0, install.stderr
    # PYTHONPATH comes before site-packages, so the wheel's copy wins over the editable install's finder
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = _run([sys.executable, "-c", "import growc.passes; print(growc.passes.__file__)"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == site / "growc" / "passes" / "__init__.py"

"""The architecture holds: layers import only downward, no import cycles, no private name crosses a module, and
the checked-in layer diagram is the one the source draws (``python docs/architecture.py`` regenerates it)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _architecture():
    spec = importlib.util.spec_from_file_location("growc_architecture", ROOT / "docs" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ARCH = _architecture()


def test_every_module_is_in_a_layer():
    for module in ARCH.module_files():
        ARCH.layer_of(module)  # raises for a module no layer holds


def test_no_upward_import_no_cycle_no_private_name_across_modules():
    assert ARCH.violations() == []


def test_the_checker_sees_what_it_must_refuse(tmp_path, monkeypatch):
    """The checker is not vacuous: an upward import (static or through ``importlib``), a cycle, a private import,
    private names reached from a test (by attribute, through ``import growc``, as a monkeypatch target) and private
    members used from another module (by attribute and by ``getattr``) are all found in a scratch tree."""
    (tmp_path / "growc" / "runtime").mkdir(parents=True)
    (tmp_path / "growc" / "fx").mkdir()
    (tmp_path / "passes").mkdir()
    (tmp_path / "growc" / "__init__.py").write_text("")
    (tmp_path / "growc" / "errors.py").write_text("")
    (tmp_path / "growc" / "runtime" / "__init__.py").write_text("")
    (tmp_path / "growc" / "fx" / "__init__.py").write_text("")
    (tmp_path / "growc" / "runtime" / "a.py").write_text(
        "from growc.fx.b import thing\n\n\nclass Bank:\n    def __init__(self):\n        self._epoch = 0\n"
    )
    (tmp_path / "growc" / "fx" / "b.py").write_text("from growc.runtime.a import _hidden\n\n\nseen = bank._epoch\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "import growc\n\n\ndef test_it(layer, monkeypatch):\n    assert getattr(layer, '_epoch') == 0\n"
        "    monkeypatch.setattr('growc.runtime.a._table', {})\n    assert growc.runtime.a._table == {}\n"
    )
    (tmp_path / "growc" / "runtime" / "c.py").write_text("import importlib\n\nimportlib.import_module('growc.cli')\n")
    (tmp_path / "growc" / "cli.py").write_text("")
    monkeypatch.setattr(ARCH, "ROOT", tmp_path)
    found = "\n".join(ARCH.violations())
    assert "growc.runtime.a:1 (runtime) imports growc.fx.b (fx): layers import only downward" in found
    assert "growc.fx.b:1 imports the private name growc.runtime.a._hidden" in found
    assert "import cycle: growc.fx.b <-> growc.runtime.a" in found
    assert "growc.fx.b:4 uses ._epoch (a private member of growc.runtime.a)" in found
    assert "tests.test_a:5 uses ._epoch (a private member of growc.runtime.a)" in found
    assert "tests.test_a:6 uses the private name growc.runtime.a._table" in found  # a monkeypatch target
    assert "tests.test_a:7 uses the private name growc.runtime.a._table" in found  # through `import growc`
    assert "growc.runtime.c:3 (runtime) imports growc.cli (interface): layers import only downward" in found


def test_the_checked_in_diagram_is_the_one_the_source_draws():
    source = ARCH.dot()
    assert (ROOT / "docs" / "architecture.dot").read_text() == source, "run: python docs/architecture.py"
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert f"dot sha256 {digest}" in (ROOT / "docs" / "architecture.svg").read_text(), (
        "run: python docs/architecture.py"
    )

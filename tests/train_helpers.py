"""Shared by the train layer's test modules: the tiny recipes, runs trained once per session, and file edits.

:func:`finished_run` (a whole tiny run) is trained once per session and only read (or copied) by the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from growc.errors import GrowcError
from growc.train import train

TINY = """\
growc: 1
name: tiny
seed: 1
data: {name: synthetic, samples: 240, shape: [1, 24], classes: 3}
parents:
  epochs: 2
  batch_size: 32
  optimizer: {lr: 0.05}
  schedule: {warmup_epochs: 0.5}
grow:
  parents:
    - {model: growc.models:CNN1d, kwargs: {width: 4, num_classes: 3}}
    - {model: growc.models:CNN1d, kwargs: {width: 4, num_classes: 3}}
  templates: {sharing: shape, init: fresh}
  growth:
    - {cross_init: orthogonal}
grown: {epochs: 2, batch_size: 32, optimizer: {name: adamw, lr: 0.003}}
output: {folder: run}
"""

# A heavier one for the kill test: epochs long enough to be interrupted in the middle of a phase.
SLOW = (
    TINY.replace("samples: 240", "samples: 3000")
    .replace("batch_size: 32", "batch_size: 8")
    .replace("epochs: 2\n  batch_size", "epochs: 4\n  batch_size")
)
LONG = TINY.replace("parents:\n  epochs: 2", "parents:\n  epochs: 4")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
BAD_DATA = "{name: cifar10, root: nowhere}"  # loading it fails: a refusal before it proves nothing was loaded
TINY_DATA = "{name: synthetic, samples: 240, shape: [1, 24], classes: 3}"

_TRAINED: dict[str, Any] = {}  # the session's runs


def checkpoints(run: Path, phase: str) -> list[Path]:
    """The checkpoint folders of ``phase`` in the run folder ``run``, oldest first."""
    return sorted((run / phase / "checkpoints").glob("epoch-*"))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "final" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    """The final artifacts of the run folders ``a`` and ``b`` hold the same tensors, bit for bit."""
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def refused(recipe: Path, out: Path | None, match: str) -> None:
    with pytest.raises(GrowcError, match=match):
        train(recipe, out, progress=False)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def prepend(path: Path, text: str) -> None:
    path.write_text(text + path.read_text())


def rehash(checkpoint: Path) -> None:
    """Forge a checkpoint's manifest so that its SHA-256s fit the files as they are now."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """TINY trained into ``FOLDER/run`` (the recipe is ``FOLDER/tiny.yaml``), and its results: trained once per
    session, whichever test module asks first (each module's ``finished`` fixture returns it)."""
    if "finished" not in _TRAINED:
        folder = tmp_path_factory.mktemp("train")
        (folder / "tiny.yaml").write_text(TINY)
        _TRAINED["finished"] = folder, train(folder / "tiny.yaml", folder / "run", progress=False)
    return _TRAINED["finished"]

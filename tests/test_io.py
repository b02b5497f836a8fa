"""Atomic artifact folders and pickle-free weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from growc.io import atomic_directory, load_state_dict, save_state_dict


def test_failure_inside_leaves_no_folder(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="half-way"), atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("partial")
        raise RuntimeError("half-way")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_folder(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise KeyboardInterrupt
    assert (dest / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["b.txt"]


def test_existing_folder_is_refused_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists \\(pass --overwrite to replace it\\)"):
        with atomic_directory(tmp_path / "out"):
            pass


def test_weights_round_trip_with_shared_storage(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied: one storage under two names
    save_state_dict(model, tmp_path / "w.safetensors")
    loaded = load_state_dict(tmp_path / "w.safetensors")
    assert sorted(loaded) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert torch.equal(loaded["0.weight"], loaded["1.weight"])
    raw = (tmp_path / "w.safetensors").read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and raw[8 + header - 1 : 8 + header].strip() in (b"}", b"")  # a JSON header, no pickle


def test_a_writer_killed_while_replacing_gets_its_old_folder_back(tmp_path: Path) -> None:
    dest = tmp_path / "art"
    dead = tmp_path / ".art.old-999999999-x"  # as left by a writer killed between its two renames (no pid alive)
    (dead / "art").mkdir(parents=True)
    (dead / "art" / "model.safetensors").write_text("the previous artifact")
    with pytest.raises(FileExistsError), atomic_directory(dest):  # the next writer first restores it
        pass
    assert (dest / "model.safetensors").read_text() == "the previous artifact"
    assert not dead.exists()
    stale_tmp = tmp_path / ".art.tmp-999999999-y"
    stale_tmp.mkdir()
    with atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"] and (dest / "new").read_text() == "new"

"""growc.train.files: typed, located reads of growc's JSON files, verified bytes, disk errors as GrowcIOError
naming the path (unit, and end to end: the rerun after a disk error is exact), discards that leave no
half-deleted folder under a name growc reads."""

from __future__ import annotations

import errno
import hashlib
import re
from pathlib import Path

import pytest
from safetensors import SafetensorError
from train_helpers import assert_same_weights, finished_run

from growc.errors import GrowcError, GrowcIOError
from growc.train import train
from growc.train.files import Fields, discard, read_json, read_verified, show, writing


@pytest.fixture
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return finished_run(tmp_path_factory)


def test_fields_are_typed_and_every_problem_names_the_file_and_the_key(tmp_path: Path) -> None:
    f = Fields(tmp_path / "x.json", "do this")
    data = {"n": 3, "x": 1.5, "s": "a", "l": [], "o": {"d": "0" * 64}, "b": True}
    assert f.get(data, "n", "int") == 3 and f.get(data, "x", "number") == 1.5 and f.get(data, "n", "number") == 3
    assert f.get(data["o"], "d", "sha256", "o.") == "0" * 64
    cases = [
        (lambda: f.get(data, "b", "int"), "key 'b': expected an integer, got True"),
        (lambda: f.get(data, "b", "number"), "key 'b': expected a number, got True"),
        (lambda: f.get(data, "s", "list"), "key 's': expected a list, got 'a'"),
        (lambda: f.get(data, "gone", "str"), "key 'gone': missing"),
        (lambda: f.get([], "n", "int"), "key 'n': missing"),
        (lambda: f.get(data["o"], "d", "object", "o."), "key 'o.d': expected an object, got '00000"),
        (lambda: f.get({"d": "A" * 64}, "d", "sha256"), r"key 'd': expected a SHA-256 \(64 hex digits\)"),
        (lambda: f.equal(data, "n", "int", 4), "key 'n': 3, expected 4"),
        (lambda: f.equal(data, "n", "int", 4, "not four"), "key 'n': not four"),
        (lambda: f.history({"history": [{}]}, "p", 2, "{n} entries"), "key 'history': 1 entries"),
        (lambda: f.history({"history": [{"phase": "q"}]}, "p", 1, ""), r"key 'history\[0\]\.phase': 'q', expected"),
    ]
    for call, message in cases:
        with pytest.raises(GrowcError, match=rf"^'{re.escape(str(tmp_path / 'x.json'))}', {message}.*; do this$"):
            call()
    assert show("x" * 100) == repr("x" * 100)[:57] + "..." and show(3) == "3"


def test_read_json_and_read_verified_refuse_what_growc_did_not_write(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("[1]")
    with pytest.raises(GrowcError, match=r"a.json' is damaged \(not a JSON object\): start over$"):
        read_json(path, "start over")
    with pytest.raises(GrowcError, match=r"b.json' is damaged \(No such file or directory\): start over$"):
        read_json(tmp_path / "b.json", "start over")
    digest = hashlib.sha256(b"[1]").hexdigest()
    assert read_verified(path, digest, tmp_path / "r.json", "hint") == b"[1]"
    with pytest.raises(GrowcError, match=r"a.json' does not match its SHA-256 in '.*r.json': it changed after"):
        read_verified(path, "0" * 64, tmp_path / "r.json", "hint")
    with pytest.raises(GrowcError, match=r"b.json' is missing \('.*r.json' records its SHA-256\); hint$"):
        read_verified(tmp_path / "b.json", digest, tmp_path / "r.json", "hint")


def test_writing_turns_disk_errors_into_growc_io_errors_naming_the_path(tmp_path: Path) -> None:
    for error in (OSError(errno.ENOSPC, "No space left on device"), SafetensorError("I/O error")):
        with pytest.raises(GrowcIOError, match=r"^cannot write '.*out': .*; free some space") as raised:
            with writing(tmp_path / "out"):
                raise error
        assert raised.value.path == str(tmp_path / "out")
    with pytest.raises(GrowcError, match="mine") as raised, writing(tmp_path / "out"):
        raise GrowcError("mine")
    assert not isinstance(raised.value, GrowcIOError)


def test_a_discarded_folder_goes_through_a_hidden_name(tmp_path: Path) -> None:
    (tmp_path / "epoch-0001").mkdir()
    (tmp_path / "epoch-0001" / "f").write_text("x")
    (tmp_path / "file").write_text("x")
    (tmp_path / ".trash-left").mkdir()  # a killed discard's leftover: deleted where it is
    for name in ("epoch-0001", "file", ".trash-left"):
        discard(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def _fail_once(monkeypatch: pytest.MonkeyPatch, target: str, when, error: Exception) -> None:
    import importlib

    module, name = target.rsplit(".", 1)
    owner = importlib.import_module(module)
    real = getattr(owner, name)
    state = {"failed": False}

    def wrapper(*args, **kwargs):
        if not state["failed"] and when(*args):
            state["failed"] = True
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize(
    ("writer", "when", "error", "where", "reason"),
    [
        ("growc.train.checkpoint.save_tensors", lambda t, p, *a: "parent1" in str(p),
         OSError(errno.ENOSPC, "No space left on device"), "parent1/checkpoints/epoch-0001", "No space left on device"),
        ("growc.train.checkpoint.save_tensors", lambda t, p, *a: "grown" in str(p),
         SafetensorError("Error while serializing: I/O error: No space left on device"),
         "grown/checkpoints/epoch-0001", "Error while serializing"),
        ("growc.train.runfolder.atomic_write_text", lambda p, *a: str(p).endswith("done.json") and "parent0" in str(p),
         PermissionError(errno.EACCES, "Permission denied"), "parent0/done.json", "Permission denied"),
        ("growc.train.loop.grow", lambda *a: True, OSError(errno.EROFS, "Read-only file system"), "grown-artifact",
         "Read-only file system"),
    ],
    ids=["checkpoint-full", "safetensors-full", "done-read-only", "growth-read-only"],
)  # fmt: skip
def test_a_disk_error_is_a_growc_io_error_naming_the_path_and_the_rerun_is_exact(
    finished: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer, when, error, where, reason
) -> None:
    folder, _ = finished
    _fail_once(monkeypatch, writer, when, error)
    with pytest.raises(GrowcIOError, match=rf"'{re.escape(str(tmp_path / 'run' / where))}'.* {reason}") as raised:
        train(folder / "tiny.yaml", tmp_path / "run", progress=False)
    assert raised.value.path == str(tmp_path / "run" / where)
    monkeypatch.undo()  # the space is free again
    train(folder / "tiny.yaml", tmp_path / "run", progress=False)
    assert_same_weights(tmp_path / "run", folder / "run")

"""Atomic artifact folders and pickle-free weights."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from growc.errors import GrowcError, GrowcExistsError, GrowcIOError
from growc.io import (
    atomic_directory,
    atomic_write_text,
    load_state_dict,
    read_json,
    rename_no_replace,
    save_state_dict,
    save_tensors,
)

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # in the names of growc's temporaries


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
    with atomic_directory(dest, overwrite=True, replaceable=lambda p: (p / "a.txt").is_file()) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "new"


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
    dead = tmp_path / f".art.old-999999999-{HOST}-abcd1234"  # a writer killed between its two renames, pid gone
    (dead / "art").mkdir(parents=True)
    (dead / "art" / "model.safetensors").write_text("the previous artifact")
    with pytest.raises(FileExistsError), atomic_directory(dest):  # the next writer first restores it
        pass
    assert (dest / "model.safetensors").read_text() == "the previous artifact"
    assert not dead.exists()
    stale_tmp = tmp_path / f".art.tmp-999999999-{HOST}-abcd1234"
    stale_tmp.mkdir()
    with atomic_directory(dest, overwrite=True, replaceable=lambda p: (p / "model.safetensors").is_file()) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert (dest / "model.safetensors").read_text() == "new"


# --------------------------------------------------------------------------- only what growc wrote is replaced


def test_a_path_through_dotdot_is_resolved_before_the_folder_is_checked(tmp_path: Path) -> None:
    precious = tmp_path / "userdata"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    keep = tmp_path / "keep.yaml"
    keep.write_text("mine")
    for target, message in (
        (tmp_path / "nonexistent" / ".." / "userdata", r"refusing to replace '.*userdata': it is not a folder growc"),
        (tmp_path / "x" / ".." / "keep.yaml", r"refusing to replace '.*keep.yaml': it is not a folder"),
    ):
        with pytest.raises(GrowcExistsError, match=message), atomic_directory(target, overwrite=True) as tmp:
            (tmp / "model.safetensors").write_text("replaced")
    assert (precious / "thesis.tex").read_text() == "years of work" and keep.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.yaml", "userdata"]  # no temporary left behind


def test_overwrite_replaces_only_a_folder_its_predicate_recognizes(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.txt").write_text("user file")
    with pytest.raises(GrowcExistsError, match="it is not a growc test folder"):
        with atomic_directory(
            dest, overwrite=True, replaceable=lambda p: (p / "mark").is_file(), what="a growc test folder"
        ) as tmp:
            (tmp / "mark").write_text("")
    assert [p.name for p in dest.iterdir()] == ["a.txt"]
    (dest / "mark").write_text("")
    with atomic_directory(dest, overwrite=True, replaceable=lambda p: (p / "mark").is_file()) as tmp:
        (tmp / "mark").write_text("new")
        (tmp / "a.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "mark"] and (dest / "mark").read_text() == "new"


def test_by_default_overwrite_replaces_a_folder_of_the_same_files_only(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("old")
    (dest / "notes.md").write_text("a user's notes")
    with pytest.raises(GrowcExistsError, match="refusing to replace"), atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (dest / "notes.md").read_text() == "a user's notes" and (dest / "a.txt").read_text() == "old"
    (dest / "notes.md").unlink()
    (tmp_path / "link").symlink_to(dest)
    with pytest.raises(GrowcExistsError, match="refusing to replace"):
        with atomic_directory(tmp_path / "sub", overwrite=True) as tmp:  # a folder inside is never replaced
            (tmp_path / "sub").mkdir()
            (tmp_path / "sub" / "inner").mkdir()
            (tmp / "a.txt").write_text("new")
    assert (tmp_path / "sub" / "inner").is_dir()


def test_a_folder_swapped_in_after_the_check_is_put_back_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(GrowcExistsError, match="refusing to replace"):
        with atomic_directory(dest, overwrite=True) as tmp:
            (dest / "thesis.tex").write_text("written while growc worked")
            (tmp / "a.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_publishing_never_replaces_a_folder_another_writer_created_meanwhile(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(GrowcExistsError, match="was created by another writer while this one worked"):
        with atomic_directory(dest) as tmp:
            (tmp / "mine").write_text("loser")
            dest.mkdir()
            (dest / "theirs").write_text("winner")
    assert [p.name for p in dest.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_rename_no_replace_refuses_an_existing_file_or_folder(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        rename_no_replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "b"
    rename_no_replace(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_text() == "a" and not (tmp_path / "a").exists()


def _racer(dest: Path, name: str, barrier: Any) -> None:
    try:
        with atomic_directory(dest) as tmp:
            (tmp / "writer").write_text(name)
            barrier.wait(timeout=60)  # both have checked the destination and done their work: now both publish
    except GrowcExistsError:
        os._exit(1)
    os._exit(0)


def test_of_two_racing_writers_exactly_one_wins(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for trial in range(5):
        dest = tmp_path / f"out{trial}"
        barrier = context.Barrier(2)
        procs = [context.Process(target=_racer, args=(dest, name, barrier)) for name in ("a", "b")]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert sorted(proc.exitcode for proc in procs) == [0, 1]
        assert [p.name for p in dest.iterdir()] == ["writer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{trial}" for trial in range(5)]


def test_atomic_file_without_overwrite_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "graph.dot"
    target.write_text("mine")
    with pytest.raises(GrowcExistsError, match="already exists"):
        atomic_write_text(target, "new", overwrite=False)
    with pytest.raises(GrowcExistsError, match="is a folder"):
        atomic_write_text(tmp_path, "new")
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["graph.dot"]
    atomic_write_text(tmp_path / "x" / ".." / "new.dot", "new", overwrite=False)
    assert (tmp_path / "new.dot").read_text() == "new"


# ------------------------------------------------------------------------------------ disk problems, named


def test_a_read_only_folder_is_a_growc_io_error_naming_the_path(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits: simulate the refusal where the write happens
        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        with pytest.raises(GrowcIOError, match=r"writing '.*w.safetensors' failed: Permission denied: check"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("growc.io.save_file", refuse)
                save_tensors({"x": torch.zeros(1)}, tmp_path / "w.safetensors")
        return
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(GrowcIOError, match="Permission denied"):
        save_tensors({"x": torch.zeros(1)}, tmp_path / "ro" / "w.safetensors")


def test_a_full_disk_is_a_growc_io_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("growc.io.save_file", full)
    with pytest.raises(GrowcIOError, match=r"writing '.*model.safetensors' failed: No space left on device: free"):
        with atomic_directory(tmp_path / "out") as tmp:
            save_tensors({"x": torch.zeros(1)}, tmp / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON: nested too deeply"),
        (b"[1, 2]", "is not a JSON object"),
        (b"\xff\xfe", "is not valid JSON"),
        (b'{"a": ', "is not valid JSON"),
    ],
    ids=["deep", "list", "not-utf8", "truncated"],
)
def test_read_json_refuses_what_growc_did_not_write(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "r.json").write_bytes(content)
    with pytest.raises(GrowcError, match=message):
        read_json(tmp_path / "r.json", "report")
    with pytest.raises(GrowcIOError, match=r"report '.*missing.json' does not exist"):
        read_json(tmp_path / "missing.json", "report")


def test_a_killed_file_writers_temporary_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    (tmp_path / f".metrics.tmp-999999999-{HOST}-abcd1234.jsonl").write_text("debris of a SIGKILLed writer")
    keep = [
        f".metrics.tmp-{os.getpid()}-{HOST}-abcd1234.jsonl",  # a live writer's
        ".metrics.tmp-999999999-0badc0de-abcd1234.jsonl",  # another host's: its process cannot be checked
        ".metrics.tmp-999999999-mine.jsonl",  # not a name growc makes
    ]
    for name in keep:
        (tmp_path / name).write_text("not debris")
    atomic_write_text(tmp_path / "metrics.jsonl", "rows\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "metrics.jsonl"])


def test_a_folder_holding_anything_the_new_one_does_not_write_is_never_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    recognized = lambda p: (p / "report.json").is_file()  # noqa: E731 - as a forged report.json would pass
    with atomic_directory(dest) as tmp:
        (tmp / "report.json").write_text("{}")
    (dest / "thesis.tex").write_text("years of work")
    (dest / "plots").mkdir()
    for extra in ("thesis.tex", "plots"):  # a user's file, then a user's (empty) folder
        with pytest.raises(GrowcExistsError, match="refusing to replace"):
            with atomic_directory(dest, overwrite=True, replaceable=recognized) as tmp:
                (tmp / "report.json").write_text("{}")
        assert (dest / extra).exists()
        (dest / "thesis.tex").unlink(missing_ok=True)
    assert sorted(p.name for p in dest.iterdir()) == ["plots", "report.json"]


def test_a_failed_replace_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    with atomic_directory(dest) as tmp:
        (tmp / "a.txt").write_text("old")

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("growc.io.rename_no_replace", broken)
    with pytest.raises(GrowcIOError, match="Input/output error"), atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_link_is_an_existing_entry_never_followed(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "deep")
    (tmp_path / "real").mkdir()
    (tmp_path / "to-folder").symlink_to(tmp_path / "real")
    for link in ("dangling", "to-folder"):
        for overwrite in (False, True):
            with pytest.raises(GrowcExistsError), atomic_directory(tmp_path / link, overwrite=overwrite) as tmp:
                (tmp / "a.txt").write_text("x")
        with pytest.raises(GrowcExistsError):
            atomic_write_text(tmp_path / link, "x")
    assert not (tmp_path / "nowhere").exists() and list((tmp_path / "real").iterdir()) == []


def test_debris_is_only_what_a_dead_writer_of_this_host_left(tmp_path: Path) -> None:
    names = [".keep.tmp-999999-mine", ".keep.tmp-999999-0badc0de-abcd1234", f".keep.tmp-{os.getpid()}-{HOST}-abcd1234"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "precious").write_text("p")
    with atomic_directory(tmp_path / "keep") as tmp:
        (tmp / "a").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "keep"])

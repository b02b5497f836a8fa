"""growc train: a recipe end to end, resume after a stop or a SIGKILL, torchrun with 2 processes, clear errors; the
run-folder rule, checkpoint integrity (manifest, fallback to the previous good one), located errors, disk errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import growc
from growc.errors import GrowcError, GrowcIOError
from growc.train.loop import StoppedEarly, count_training_flops, train

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
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _checkpoints(run: Path, phase: str) -> list[Path]:
    return sorted((run / phase / "checkpoints").glob("epoch-*"))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "final" / "model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("train")
    (folder / "tiny.yaml").write_text(TINY)
    results = train(folder / "tiny.yaml", folder / "run", progress=False)
    return folder, results


def test_a_tiny_recipe_trains_end_to_end(finished: tuple[Path, dict]) -> None:
    folder, results = finished
    run = folder / "run"
    names = {p.name for p in run.iterdir()}
    assert {"run.json", "recipe.yaml", "parent0", "parent1", "grown-artifact", "grown", "final"} <= names
    assert {"metrics.jsonl", "metrics.csv", "results.json", "results.md", "curves.png"} <= names
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in rows] == [
        ("parent0", 1), ("parent0", 2), ("parent1", 1), ("parent1", 2), ("grown", 1), ("grown", 2)
    ]  # fmt: skip
    assert (run / "metrics.csv").read_text().splitlines()[
        0
    ] == "phase,epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds"
    assert [r["model"] for r in results["rows"]] == [
        "parent 0",
        "parent 1",
        "grown, right after growth",
        "grown, trained",
    ]
    assert results["rows"][-1]["test_acc"] > 0.6  # 3 separable clusters: far above chance (1/3)
    assert results["total_flops"] == pytest.approx(sum(r.get("flops", 0) for r in results["rows"]))
    assert not (run / "parent0" / "checkpoints").exists()  # a finished phase keeps only its result
    table = (run / "results.md").read_text()
    assert "| grown, trained |" in table and "| **total** |" in table


def test_the_final_artifact_loads_and_is_the_trained_model(finished: tuple[Path, dict]) -> None:
    folder, results = finished
    model = growc.load(folder / "run" / "final")
    digest = __import__("hashlib").sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    assert [digest.hexdigest()] == results["weights_sha256"]


def test_parents_are_trained_templatized_and_the_growth_mixes_their_templates(finished: tuple[Path, dict]) -> None:
    folder, _ = finished
    parent = load_file(folder / "run" / "parent0" / "model.safetensors")
    assert any(k.startswith("growc_banks.") for k in parent)
    grown = load_file(folder / "run" / "grown-artifact" / "model.safetensors")
    trained_templates = [v for k, v in parent.items() if k.endswith("templates")]
    assert any(torch.equal(t, g) for t in trained_templates for k, g in grown.items() if k.endswith("templates"))


def test_rerunning_a_finished_run_changes_nothing(finished: tuple[Path, dict]) -> None:
    folder, results = finished
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "run" / "final").iterdir()}
    again = train(folder / "tiny.yaml", folder / "run", progress=False)
    assert again["weights_sha256"] == results["weights_sha256"]
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "run" / "final").iterdir()} == before  # not rewritten


def test_a_stopped_run_resumes_to_the_uninterrupted_result(finished: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = finished
    recipe = folder / "tiny.yaml"
    with pytest.raises(StoppedEarly, match=r"stopped after 3 epoch\(s\) as asked; rerun the command to resume"):
        train(recipe, tmp_path / "run", stop_after=3, progress=False)
    [checkpoint] = _checkpoints(tmp_path / "run", "parent1")
    assert checkpoint.name == "epoch-0001"
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 1
    with pytest.raises(StoppedEarly):
        train(recipe, tmp_path / "run", stop_after=2, progress=False)  # into the grown phase
    train(recipe, tmp_path / "run", progress=False)
    _assert_same_weights(tmp_path / "run", folder / "run")


def test_a_run_folder_of_another_recipe_is_refused(finished: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = finished
    (tmp_path / "other.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    with pytest.raises(GrowcError, match="holds a run of a different recipe"):
        train(tmp_path / "other.yaml", folder / "run", progress=False)


def test_a_missing_data_folder_is_an_error_before_any_training(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(TINY.replace("{name: synthetic, samples: 240, shape: [1, 24], classes: 3}",
                                                  "{name: cifar10, root: nowhere}"))  # fmt: skip
    with pytest.raises(GrowcError, match=r"no cifar10 data under '.*nowhere'"):
        train(tmp_path / "r.yaml", tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_model_that_does_not_fit_the_data_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(TINY.replace("num_classes: 3", "num_classes: 2"))
    with pytest.raises(GrowcError, match=r"r.yaml:12:43: grow.parents\[0\].kwargs: parent 0 outputs 2 classes; "
                       r"synthetic has 3"):  # fmt: skip
        train(tmp_path / "r.yaml", tmp_path / "run", progress=False)
    tiny_data = "{name: synthetic, samples: 240, shape: [1, 24], classes: 3}"
    empty_data = "{name: synthetic, samples: 20, shape: [1, 24], classes: 3, test_fraction: 0.99}"
    (tmp_path / "e.yaml").write_text(TINY.replace(tiny_data, empty_data))
    with pytest.raises(GrowcError, match=r"the training set has 0 example\(s\): too few for one step on 1 rank"):
        train(tmp_path / "e.yaml", tmp_path / "run2", progress=False)


def test_a_damaged_run_file_is_a_clear_error(finished: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = finished
    import shutil

    shutil.copytree(folder / "run", tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text("{")
    with pytest.raises(GrowcError, match=r"run.json' is damaged \(.*\): delete the run folder to start over, or "):
        train(folder / "tiny.yaml", tmp_path / "run", progress=False)


def test_training_flops_count_the_weight_generation_once_per_step() -> None:
    model = growc.models.resolve_model("growc.models:CNN1d", width=4, num_classes=3)
    x = torch.randn(2, 1, 24)
    plain = count_training_flops(model, (1, 24), 3)
    mixed = count_training_flops(growc.templatize(model, (x,), init="fresh", verify=False), (1, 24), 3)
    assert plain["per_step"] == 0 and plain["per_sample"] > 0
    assert mixed["per_sample"] == plain["per_sample"]  # the same convolutions per example
    assert mixed["per_step"] > 0  # plus generating the weights (forward and backward of the mix), once a step


def _run(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "growc", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_sigkill_mid_phase_then_rerun_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    (tmp_path / "slow.yaml").write_text(SLOW)
    reference = _run(["train", "slow.yaml", "--out", "reference", "--no-progress"], tmp_path)
    victim = _run(["train", "slow.yaml", "--out", "victim", "--no-progress"], tmp_path)
    deadline = time.monotonic() + 300
    while not _checkpoints(tmp_path / "victim", "parent1"):
        assert victim.poll() is None, victim.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "victim" / "parent1" / "done.json").exists()  # killed in the middle of a phase
    resumed = _run(["train", "slow.yaml", "--out", "victim", "--no-progress"], tmp_path)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert "parent1: resuming after epoch" in err.decode()
    assert reference.wait(timeout=600) == 0
    _assert_same_weights(tmp_path / "victim", tmp_path / "reference")


def _torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([*command, "-m", "growc", *args], cwd=cwd, env=ENV, capture_output=True, timeout=600)


def test_torchrun_with_two_processes_ends_with_identical_weights_and_resumes_on_one(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    done = _torchrun(2, ["train", "tiny.yaml", "--out", "ddp", "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2
    assert len(results["weights_sha256"]) == 2 and len(set(results["weights_sha256"])) == 1
    assert done.stdout.decode().count("| grown, trained |") == 1  # one set of outputs, from rank 0

    stopped = _torchrun(2, ["train", "tiny.yaml", "--out", "mixed", "--no-progress", "--stop-after", "3"], tmp_path)
    assert stopped.returncode == 0, stopped.stderr.decode()[-3000:]
    assert (_checkpoints(tmp_path / "mixed", "parent1")[-1] / "state.json").is_file()
    single = subprocess.run(
        [sys.executable, "-m", "growc", "train", "tiny.yaml", "--out", "mixed", "--no-progress"],
        cwd=tmp_path, env=ENV, capture_output=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    assert json.loads((tmp_path / "mixed" / "results.json").read_text())["world_size"] == 1


# ------------------------------------------------------------------------------------------ the run-folder rule

BAD_DATA = "{name: cifar10, root: nowhere}"  # loading it fails: a refusal before it proves nothing was loaded
TINY_DATA = "{name: synthetic, samples: 240, shape: [1, 24], classes: 3}"


def _refused(recipe: Path, out: Path | None, match: str) -> None:
    with pytest.raises(GrowcError, match=match):
        train(recipe, out, progress=False)


@pytest.mark.parametrize("case", ["slash", "other-files", "dotdot", "a-file", "run-json-deleted", "not-a-run-json"])
def test_a_run_folder_is_new_empty_or_this_recipes_run_and_anything_else_is_refused_before_any_work(
    finished: tuple[Path, dict], tmp_path: Path, case: str
) -> None:
    folder, _ = finished
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY.replace(TINY_DATA, BAD_DATA).replace("{folder: run}", "{folder: /}"))
    out: Path | None = tmp_path / "out"
    if case == "slash":
        out = None
        where = "/"
        reason = r"it is not empty and is not a growc run folder \(no run.json\)"
    elif case == "other-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        where, reason = str(out), r"it is not empty and is not a growc run folder \(no run.json\)"
    elif case == "dotdot":
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "notes.txt").write_text("mine")
        out = tmp_path / "new" / ".." / "full"
        where, reason = str(tmp_path / "full"), "it is not empty"
    elif case == "a-file":
        out.write_text("mine")
        where, reason = str(out), "it is a file, not a folder"
    elif case == "run-json-deleted":
        shutil.copytree(folder / "run", out)
        (out / "run.json").unlink()
        where = str(out)
        reason = r"it holds growc run files \(.*'parent0'.*\) but no run.json"
    else:
        out.mkdir()
        (out / "run.json").write_text('{"recipe_sha256": "0"}')
        (out / "notes.txt").write_text("mine")
        where, reason = (
            str(out),
            r"'.*run.json' is not a growc run file \(no \"format\": \"growc-run\" with a recipe_sha256\)",
        )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _refused(recipe, out, rf"refusing to use '{where}' as the run folder: {reason}")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created, nothing loaded


def test_a_run_folder_says_what_it_is_and_an_empty_folder_becomes_one(finished: tuple[Path, dict], tmp_path: Path):
    folder, _ = finished
    run = json.loads((folder / "run" / "run.json").read_text())
    assert run["format"] == "growc-run" and len(run["recipe_sha256"]) == 64
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".run.json.tmp-1").write_text("{")  # left by a writer killed before its rename
    with pytest.raises(StoppedEarly):
        train(folder / "tiny.yaml", tmp_path / "empty", stop_after=0, progress=False)
    assert json.loads((tmp_path / "empty" / "run.json").read_text()) == run
    assert not (tmp_path / "empty" / ".run.json.tmp-1").exists()


def test_another_recipes_checkpoints_and_phases_are_refused_even_under_a_forged_run_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(TINY)
    (tmp_path / "b.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    with pytest.raises(StoppedEarly):
        train(tmp_path / "b.yaml", tmp_path / "b", stop_after=0, progress=False)  # b/run.json: recipe b's
    with pytest.raises(StoppedEarly):
        train(tmp_path / "a.yaml", tmp_path / "run", stop_after=1, progress=False)  # a checkpoint of parent0
    (tmp_path / "run" / "run.json").unlink()
    _refused(tmp_path / "b.yaml", tmp_path / "run", r"it holds growc run files \(.*'parent0'.*\) but no run.json")
    shutil.copy(tmp_path / "b" / "run.json", tmp_path / "run" / "run.json")
    _refused(
        tmp_path / "b.yaml",
        tmp_path / "run",
        r"'.*parent0/checkpoints/epoch-0001/manifest.json', key 'fingerprint': this checkpoint belongs to another "
        r"recipe",
    )
    with pytest.raises(StoppedEarly):
        train(tmp_path / "a.yaml", tmp_path / "run2", stop_after=2, progress=False)  # parent0 finished
    shutil.copy(tmp_path / "b" / "run.json", tmp_path / "run2" / "run.json")
    _refused(tmp_path / "b.yaml", tmp_path / "run2",
             r"'.*parent0/done.json', key 'fingerprint': this phase belongs to another recipe")  # fmt: skip


# ----------------------------------------------------------------------------------------- checkpoint integrity

LONG = TINY.replace("parents:\n  epochs: 2", "parents:\n  epochs: 4")


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """parent0 of LONG trained without a stop (``reference``), and a run stopped after its epoch 3 (``stopped``:
    checkpoints after epochs 2 and 3)."""
    folder = tmp_path_factory.mktemp("long")
    (folder / "long.yaml").write_text(LONG)
    for name, epochs in (("reference", 4), ("stopped", 3)):
        with pytest.raises(StoppedEarly):
            train(folder / "long.yaml", folder / name, stop_after=epochs, progress=False)
    assert [p.name for p in _checkpoints(folder / "stopped", "parent0")] == ["epoch-0002", "epoch-0003"]
    return folder


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _prepend(path: Path, text: str) -> None:
    path.write_text(text + path.read_text())


def _rehash(checkpoint: Path) -> None:
    """Forge a checkpoint's manifest so that its SHA-256s fit the files as they are now."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def _resume_parent0(long_runs: Path, run: Path) -> None:
    with pytest.raises(StoppedEarly):
        train(long_runs / "long.yaml", run, stop_after=2, progress=False)
    a, b = (
        load_file(run / "parent0" / "model.safetensors"),
        load_file(long_runs / "reference/parent0/model.safetensors"),
    )
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


DAMAGE = {
    "model-byte": (lambda c: _flip_last_byte(c / "model.safetensors"), r"'model.safetensors' does not match its SHA"),
    "optimizer-byte": (lambda c: _flip_last_byte(c / "optimizer.safetensors"), r"'optimizer.safetensors' does not"),
    "epoch-99": (lambda c: _edit_json(c / "state.json", lambda s: s.update(epoch=99)), r"'state.json' does not"),
    "no-state": (lambda c: (c / "state.json").unlink(), r"'state.json' is missing"),
    "no-manifest": (lambda c: (c / "manifest.json").unlink(), r"'manifest.json' is missing"),
    "truncated-optimizer": (lambda c: (c / "optimizer.json").write_text('{"__dict__": '), r"'optimizer.json' does"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_good_one_and_says_so(
    long_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    shutil.copytree(long_runs / "stopped", tmp_path / "run")
    newest = tmp_path / "run" / "parent0" / "checkpoints" / "epoch-0003"
    harm, why = DAMAGE[damage]
    harm(newest)
    capsys.readouterr()
    _resume_parent0(long_runs, tmp_path / "run")
    err = capsys.readouterr().err
    assert re.search(
        rf"parent0: checkpoint '{re.escape(str(newest))}' is damaged \({why}.*\); resuming from the previous one, "
        rf"'{re.escape(str(newest.parent / 'epoch-0002'))}'",
        err,
    ), err
    assert "parent0: resuming after epoch 2 from" in err


def test_with_both_checkpoints_damaged_the_phase_is_refused_not_silently_restarted(
    long_runs: Path, tmp_path: Path
) -> None:
    shutil.copytree(long_runs / "stopped", tmp_path / "run")
    checkpoints = tmp_path / "run" / "parent0" / "checkpoints"
    (checkpoints / "epoch-0003" / "state.json").unlink()
    _flip_last_byte(checkpoints / "epoch-0002" / "model.safetensors")
    _refused(
        long_runs / "long.yaml",
        tmp_path / "run",
        rf"parent0: no good checkpoint in '{re.escape(str(checkpoints))}': '.*epoch-0003' \('state.json' is missing\); "
        r"'.*epoch-0002' \('model.safetensors' does not match its SHA-256 in manifest.json\); delete '.*checkpoints' "
        "to restart this phase",
    )


INCONSISTENT = {
    "epoch-99": ("state.json", lambda s: s.update(epoch=99), r"key 'epoch': 99 is outside 0\.\.4"),
    "epoch-text": ("state.json", lambda s: s.update(epoch="3"), r"key 'epoch': expected an integer, got '3'"),
    "history": ("state.json", lambda s: s.update(history=s["history"][:2]), r"key 'history': 2 entries for epoch 3"),
    "history-entry": (
        "state.json",
        lambda s: s["history"].__setitem__(1, {"epoch": []}),
        r"key 'history\[1\]\.phase': missing",
    ),
    "phase": ("state.json", lambda s: s.update(phase="parent1"), r"key 'phase': 'parent1', expected 'parent0'"),
    "not-object": ("state.json", lambda s: s.clear(), r"key 'phase': missing"),
    "fingerprint": (
        "manifest.json",
        lambda m: m.update(fingerprint="0" * 64),
        r"key 'fingerprint': this checkpoint belongs to another recipe",
    ),
    "manifest-files": ("manifest.json", lambda m: m.update(files=[1]), r"key 'files': expected an object, got \[1\]"),
    "optimizer": ("optimizer.json", lambda o: o.update({"__dict__": [[1]]}), r"not an optimizer state growc wrote"),
}


@pytest.mark.parametrize("case", sorted(INCONSISTENT))
def test_a_checkpoint_whose_files_verify_but_disagree_is_refused_naming_the_file_and_the_key(
    long_runs: Path, tmp_path: Path, case: str
) -> None:
    shutil.copytree(long_runs / "stopped", tmp_path / "run")
    newest = tmp_path / "run" / "parent0" / "checkpoints" / "epoch-0003"
    name, edit, message = INCONSISTENT[case]
    _edit_json(newest / name, edit)
    if name != "manifest.json":
        _rehash(newest)
    _refused(long_runs / "long.yaml", tmp_path / "run", rf"'{re.escape(str(newest / name))}'(, |: ).*{message}")


def test_deeply_nested_checkpoint_json_is_refused_naming_the_file(long_runs: Path, tmp_path: Path) -> None:
    shutil.copytree(long_runs / "stopped", tmp_path / "run")
    newest = tmp_path / "run" / "parent0" / "checkpoints" / "epoch-0003"
    (newest / "optimizer.json").write_text("[" * 100_000 + "]" * 100_000)
    _rehash(newest)
    _refused(long_runs / "long.yaml", tmp_path / "run",
             rf"'{re.escape(str(newest / 'optimizer.json'))}' is not valid JSON: nested too deeply")  # fmt: skip


FINISHED_DAMAGE = {
    "parent-weights": (
        lambda r: _flip_last_byte(r / "parent0" / "model.safetensors"),
        r"'.*parent0/model.safetensors' does not match its SHA-256 in '.*parent0/done.json'",
    ),
    "history": (
        lambda r: _edit_json(r / "parent0" / "done.json", lambda d: d.update(history=5)),
        r"'.*parent0/done.json', key 'history': expected a list, got 5",
    ),
    "flops": (
        lambda r: _edit_json(r / "grown" / "done.json", lambda d: d.pop("flops")),
        r"'.*grown/done.json', key 'flops': missing",
    ),
    "flops-nested": (
        lambda r: _edit_json(r / "parent1" / "done.json", lambda d: d["flops"].update(total=None)),
        r"'.*parent1/done.json', key 'flops.total': expected a number, got None",
    ),
    "growth-accuracy": (
        lambda r: _edit_json(r / "grown-artifact" / "grow.json", lambda d: d.update(test_acc="x")),
        r"'.*grown-artifact/grow.json', key 'test_acc': expected a number, got 'x'",
    ),
    "artifact-file": (
        lambda r: _prepend(r / "grown-artifact" / "spec.yaml", "# edited\n"),
        r"'.*grown-artifact/spec.yaml' does not match its SHA-256 in '.*grown-artifact/grow.json'",
    ),
    "done-not-json": (
        lambda r: (r / "grown" / "done.json").write_text("[1, 2]"),
        r"'.*grown/done.json' is damaged \(not a JSON object\)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FINISHED_DAMAGE))
def test_a_finished_phase_or_growth_is_verified_before_it_is_reused(
    finished: tuple[Path, dict], tmp_path: Path, case: str
) -> None:
    folder, _ = finished
    shutil.copytree(folder / "run", tmp_path / "run")
    harm, message = FINISHED_DAMAGE[case]
    harm(tmp_path / "run")
    _refused(folder / "tiny.yaml", tmp_path / "run", message)


# ------------------------------------------------------------------------------------------------- disk errors


def _fail_once(monkeypatch: pytest.MonkeyPatch, name: str, when, error: Exception) -> None:
    import growc.train.loop

    real = getattr(growc.train.loop, name)
    state = {"failed": False}

    def wrapper(*args, **kwargs):
        if not state["failed"] and when(*args):
            state["failed"] = True
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(growc.train.loop, name, wrapper)


@pytest.mark.parametrize(
    ("writer", "when", "error", "where", "reason"),
    [
        ("save_tensors", lambda t, p, *a: "parent1" in str(p), OSError(errno.ENOSPC, "No space left on device"),
         "parent1/checkpoints/epoch-0001", "No space left on device"),
        ("save_tensors", lambda t, p, *a: "grown" in str(p),
         __import__("safetensors").SafetensorError("Error while serializing: I/O error: No space left on device"),
         "grown/checkpoints/epoch-0001", "Error while serializing"),
        ("atomic_write_text", lambda p, *a: str(p).endswith("done.json") and "parent0" in str(p),
         PermissionError(errno.EACCES, "Permission denied"), "parent0/done.json", "Permission denied"),
        ("grow", lambda *a: True, OSError(errno.EROFS, "Read-only file system"), "grown-artifact",
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
    _assert_same_weights(tmp_path / "run", folder / "run")


def test_of_two_recipes_claiming_one_folder_at_once_exactly_one_gets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.yaml").write_text(TINY)
    (tmp_path / "b.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    out = tmp_path / "run"
    import growc.io

    publish = growc.io.rename_no_replace

    def rival_first(source: object, target: object) -> None:
        if Path(str(target)).name == "run.json" and not Path(str(target)).exists():
            Path(str(target)).write_text('{"format": "growc-run", "recipe_sha256": "the other recipe"}\n')
        publish(source, target)

    # b's claim lands between a's check and write
    monkeypatch.setattr("growc.train.loop.rename_no_replace", rival_first)
    with pytest.raises(GrowcError, match=r"another growc train claimed it while this one started"):
        train(tmp_path / "a.yaml", out, progress=False)
    assert json.loads((out / "run.json").read_text())["recipe_sha256"] == "the other recipe"


def test_a_final_artifact_swapped_for_another_runs_is_refused_on_rerun(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = finished
    mine = tmp_path / "mine"
    shutil.copytree(folder / "run", mine)
    (tmp_path / "other.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    train(tmp_path / "other.yaml", tmp_path / "other", progress=False)
    shutil.rmtree(mine / "final")
    shutil.copytree(tmp_path / "other" / "final", mine / "final")
    with pytest.raises(GrowcError, match=r"final' does not hold the weights this run's grown phase ended with"):
        train(folder / "tiny.yaml", mine, progress=False)

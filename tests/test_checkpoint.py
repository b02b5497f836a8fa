"""growc.train.checkpoint: the optimizer-state codec (no pickle, round trip exact, foreign states refused with a
reason) and checkpoint integrity (manifest, fallback to the previous good one, located errors)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import LONG, checkpoints, edit_json, flip_last_byte, refused, rehash

from growc.errors import GrowcError
from growc.train import StoppedEarly, train
from growc.train.checkpoint import (
    CHECKPOINT_FILES,
    Checkpoints,
    check_optimizer_state,
    flatten_state,
    unflatten_state,
)

# ------------------------------------------------------------------------------------------ the optimizer codec


def _stepped(kind: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    groups = [{"params": list(model[0].parameters()), "weight_decay": 0.1},
              {"params": list(model[1].parameters()), "weight_decay": 0.0}]  # fmt: skip
    if kind == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
    return model, optimizer


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_an_optimizer_state_round_trips_through_json_and_tensors(kind: str) -> None:
    _, optimizer = _stepped(kind)
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    structure = json.loads(json.dumps(flatten_state(state, tensors)))  # what optimizer.json holds
    assert tensors and all(isinstance(v, torch.Tensor) for v in tensors.values())
    back = unflatten_state(structure, tensors)
    assert check_optimizer_state(back, optimizer) is None
    if kind == "adamw":  # betas: a tuple, a list after JSON
        state = {**state, "param_groups": [{**g, "betas": list(g["betas"])} for g in state["param_groups"]]}
    assert _equal(back, state)


def test_an_optimizer_state_that_is_not_this_optimizers_is_refused_with_the_reason() -> None:
    _, optimizer = _stepped("sgd")
    _, adamw = _stepped("adamw")
    good = optimizer.state_dict()

    def edited(**change) -> dict:
        return {**good, **change}

    first = good["param_groups"][0]
    weight = good["state"][0]
    cases = [
        ([1], "expected the keys 'state' and 'param_groups'"),
        (edited(param_groups=good["param_groups"][:1]), "expected 2 parameter groups"),
        (edited(param_groups=[{**first, "params": [9]}, good["param_groups"][1]]),
         "parameter group 0 is not this optimizer's"),
        (edited(param_groups=[{**first, "lr": "0.1"}, good["param_groups"][1]]), "parameter group 0: 'lr' is '0.1'"),
        (edited(param_groups=[{**first, "nesterov": 1}, good["param_groups"][1]]),
         "parameter group 0: 'nesterov' is 1"),
        (edited(state=[]), "'state' is not a mapping"),
        (edited(state={7: weight}), "state of parameter 7 is not this optimizer's"),
        (edited(state={0: {1: weight["momentum_buffer"]}}), "parameter 0: key 1"),
        (edited(state={0: {"momentum_buffer": torch.zeros(2)}}),
         "parameter 0: 'momentum_buffer' has shape [2] and dtype torch.float32"),
        (edited(state={0: {"momentum_buffer": "x"}}), "parameter 0: 'momentum_buffer' is 'x'"),
        (edited(state={0: {"step": torch.zeros(2)}}), "parameter 0: 'step' has 2 values"),
        (adamw.state_dict(), "parameter group 0 is not this optimizer's"),
    ]  # fmt: skip
    for loaded, reason in cases:
        assert check_optimizer_state(loaded, optimizer) == reason


def test_a_state_holding_something_else_cannot_be_checkpointed() -> None:
    with pytest.raises(GrowcError, match="cannot checkpoint optimizer state of type object"):
        flatten_state({"state": {0: object()}}, {})


def test_checkpoints_keep_the_newest_two_and_resume_from_the_newest(tmp_path: Path) -> None:
    model, optimizer = _stepped("adamw")
    said: list[str] = []
    folder = Checkpoints(tmp_path / "checkpoints", "f" * 64, torch.device("cpu"), said.append)
    history = []
    for epoch in (1, 2, 3):
        history.append({"phase": "p", "epoch": epoch, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5,
                        "test_loss": 1.0, "test_acc": 0.5, "seconds": 0.1})  # fmt: skip
        folder.save("p", epoch, model, optimizer, history)
        assert folder.good == tmp_path / "checkpoints" / f"epoch-{epoch:04d}"
    assert [p.name for p in checkpoints(tmp_path, "")] == ["epoch-0002", "epoch-0003"]
    newest = tmp_path / "checkpoints" / "epoch-0003"
    assert sorted(p.name for p in newest.iterdir()) == sorted([*CHECKPOINT_FILES, "manifest.json"])
    fresh, other = _stepped("adamw")
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    again = Checkpoints(tmp_path / "checkpoints", "f" * 64, torch.device("cpu"), said.append)
    resumed = again.resume("p", 4, fresh, other)
    assert resumed is not None and resumed.epoch == 3 and resumed.history == history
    assert again.good == newest
    assert said == [f"p: resuming after epoch 3 from {newest}"]
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))
    assert _equal(other.state_dict(), optimizer.state_dict())
    assert (
        Checkpoints(tmp_path / "none", "f" * 64, torch.device("cpu"), said.append).resume("p", 4, fresh, other) is None
    )


# ----------------------------------------------------------------------------------------- checkpoint integrity


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """parent0 of LONG trained without a stop (``reference``), and a run stopped after its epoch 3 (``stopped``:
    checkpoints after epochs 2 and 3)."""
    folder = tmp_path_factory.mktemp("long")
    (folder / "long.yaml").write_text(LONG)
    for name, epochs in (("reference", 4), ("stopped", 3)):
        with pytest.raises(StoppedEarly):
            train(folder / "long.yaml", folder / name, stop_after=epochs, progress=False)
    assert [p.name for p in checkpoints(folder / "stopped", "parent0")] == ["epoch-0002", "epoch-0003"]
    return folder


def _resume_parent0(long_runs: Path, run: Path) -> None:
    with pytest.raises(StoppedEarly):
        train(long_runs / "long.yaml", run, stop_after=2, progress=False)
    a, b = (
        load_file(run / "parent0" / "model.safetensors"),
        load_file(long_runs / "reference/parent0/model.safetensors"),
    )
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


DAMAGE = {
    "model-byte": (lambda c: flip_last_byte(c / "model.safetensors"), r"'model.safetensors' does not match its SHA"),
    "optimizer-byte": (lambda c: flip_last_byte(c / "optimizer.safetensors"), r"'optimizer.safetensors' does not"),
    "epoch-99": (lambda c: edit_json(c / "state.json", lambda s: s.update(epoch=99)), r"'state.json' does not"),
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
    flip_last_byte(checkpoints / "epoch-0002" / "model.safetensors")
    refused(
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
    edit_json(newest / name, edit)
    if name != "manifest.json":
        rehash(newest)
    refused(long_runs / "long.yaml", tmp_path / "run", rf"'{re.escape(str(newest / name))}'(, |: ).*{message}")


def test_deeply_nested_checkpoint_json_is_refused_naming_the_file(long_runs: Path, tmp_path: Path) -> None:
    shutil.copytree(long_runs / "stopped", tmp_path / "run")
    newest = tmp_path / "run" / "parent0" / "checkpoints" / "epoch-0003"
    (newest / "optimizer.json").write_text("[" * 100_000 + "]" * 100_000)
    rehash(newest)
    refused(long_runs / "long.yaml", tmp_path / "run",
            rf"'{re.escape(str(newest / 'optimizer.json'))}' is not valid JSON: nested too deeply")  # fmt: skip

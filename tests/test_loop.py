"""growc.train.loop: a recipe end to end (phases, growth, final artifact, outputs), resume after a stop or a
SIGKILL, errors before any training, and :func:`growc.train.fit` (one phase, no run folder)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import ENV, SLOW, TINY, assert_same_weights, checkpoints, finished_run

import growc
from growc.errors import GrowcError
from growc.models.datasets import load_data
from growc.spec.recipe import load_recipe
from growc.train import StoppedEarly, fit, train
from growc.train.loop import epoch_seed, make_optimizer


@pytest.fixture
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return finished_run(tmp_path_factory)


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
    assert json.loads((run / "results.json").read_text()) == results


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
    [checkpoint] = checkpoints(tmp_path / "run", "parent1")
    assert checkpoint.name == "epoch-0001"
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 1
    with pytest.raises(StoppedEarly):
        train(recipe, tmp_path / "run", stop_after=2, progress=False)  # into the grown phase
    train(recipe, tmp_path / "run", progress=False)
    assert_same_weights(tmp_path / "run", folder / "run")


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


def _run(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "growc", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_sigkill_mid_phase_then_rerun_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    (tmp_path / "slow.yaml").write_text(SLOW)
    reference = _run(["train", "slow.yaml", "--out", "reference", "--no-progress"], tmp_path)
    victim = _run(["train", "slow.yaml", "--out", "victim", "--no-progress"], tmp_path)
    deadline = time.monotonic() + 300
    while not checkpoints(tmp_path / "victim", "parent1"):
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
    assert_same_weights(tmp_path / "victim", tmp_path / "reference")


# ------------------------------------------------------------------------------------------- one phase: fit


def _tiny_phase(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    recipe = load_recipe(tmp_path / "tiny.yaml")
    return load_data(recipe.data, recipe.base_dir), recipe


def test_fit_trains_one_phase_in_place_and_is_repeatable(tmp_path: Path) -> None:
    data, recipe = _tiny_phase(tmp_path)
    records, states = [], []
    for _ in range(2):
        model = growc.models.resolve_model("growc.models:CNN1d", width=4, num_classes=3)
        if not states:
            initial = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            model.load_state_dict(initial)
        records.append(fit(model, data, recipe.parents, seed=5))
        states.append(model.state_dict())
    record = records[0]
    assert [(h["phase"], h["epoch"]) for h in record["history"]] == [("fit", 1), ("fit", 2)]
    assert record["test_acc"] == record["history"][-1]["test_acc"]
    assert record["params"] == sum(p.numel() for p in model.parameters())
    assert record["flops"]["steps"] == 2 * -(-data.train_size // recipe.parents.batch_size)
    assert any(not torch.equal(initial[k], states[0][k]) for k in initial)  # trained in place
    assert all(torch.equal(states[0][k], states[1][k]) for k in initial)  # seeded: the same weights again
    for a, b in zip(records[0]["history"], records[1]["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_an_epoch_seed_depends_on_seed_phase_and_epoch_alone() -> None:
    seeds = {epoch_seed(s, p, e) for s in range(3) for p in range(3) for e in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**62 for s in seeds)
    assert epoch_seed(1, 2, 3) == epoch_seed(1, 2, 3)


def test_the_phase_optimizer_is_sgd_or_adamw_as_the_recipe_says(tmp_path: Path) -> None:
    _, recipe = _tiny_phase(tmp_path)
    sgd = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], recipe.parents.optimizer)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.05
    assert sgd.param_groups[0]["momentum"] == 0.9 and not sgd.param_groups[0]["nesterov"]
    adamw = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], recipe.grown.optimizer)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == 0.003

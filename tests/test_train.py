"""growc train: a recipe end to end, resume after a stop or a SIGKILL, torchrun with 2 processes, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import growc
from growc.errors import GrowcError
from growc.train import StoppedEarly, count_training_flops, train

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
    assert not (run / "parent0" / "checkpoint").exists()  # a finished phase keeps only its result
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
    state = json.loads((tmp_path / "run" / "parent1" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1
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
    with pytest.raises(GrowcError, match=r"run.json' is damaged .*: delete it \(or its phase folder\)"):
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
    checkpoint = tmp_path / "victim" / "parent1" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
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
    assert (tmp_path / "mixed" / "parent1" / "checkpoint" / "state.json").is_file()
    single = subprocess.run(
        [sys.executable, "-m", "growc", "train", "tiny.yaml", "--out", "mixed", "--no-progress"],
        cwd=tmp_path, env=ENV, capture_output=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    assert json.loads((tmp_path / "mixed" / "results.json").read_text())["world_size"] == 1

"""growc.train.distributed: a world of one without torchrun (every collective a no-op), and torchrun with two
processes (identical weights; a run started on two ranks resumes on one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from train_helpers import ENV, TINY, checkpoints

from growc.train.distributed import Distributed, setup_distributed


def test_without_torchrun_the_process_is_the_one_rank_of_a_world_of_one(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks = setup_distributed()
    assert ranks == Distributed() and ranks.main and not ranks.started
    model = torch.nn.Linear(2, 2)
    assert ranks.wrap(model) is model
    assert ranks.sum(1.0, 2.5) == [1.0, 2.5] and ranks.gather("x") == ["x"]
    ranks.barrier()
    ranks.sync_buffers(model)
    ranks.close()


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
    assert (checkpoints(tmp_path / "mixed", "parent1")[-1] / "state.json").is_file()
    single = subprocess.run(
        [sys.executable, "-m", "growc", "train", "tiny.yaml", "--out", "mixed", "--no-progress"],
        cwd=tmp_path, env=ENV, capture_output=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    assert json.loads((tmp_path / "mixed" / "results.json").read_text())["world_size"] == 1

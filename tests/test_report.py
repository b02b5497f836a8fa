"""growc.train.report: the metrics files, the results (a row per model, the total FLOPs), the markdown table, the
curves and the weights' SHA-256."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
from train_helpers import TINY

from growc.spec.recipe import load_recipe
from growc.train import format_results
from growc.train.report import METRICS_FIELDS, results, weights_sha256, write_metrics, write_results


def _epoch(phase: str, epoch: int) -> dict:
    return {"phase": phase, "epoch": epoch, "lr": 0.1, "train_loss": 1.0 / epoch, "train_acc": 0.5,
            "test_loss": 1.1 / epoch, "test_acc": 0.4 + 0.1 * epoch, "seconds": 0.25}  # fmt: skip


def _phase(name: str, epochs: int, params: int, total: float) -> dict:
    return {"phase": name, "epochs": epochs, "history": [_epoch(name, e) for e in range(1, epochs + 1)],
            "params": params, "flops": {"total": total}, "test_acc": 0.4 + 0.1 * epochs}  # fmt: skip


@pytest.fixture
def outcome(tmp_path: Path) -> dict:
    (tmp_path / "tiny.yaml").write_text(TINY)
    recipe = load_recipe(tmp_path / "tiny.yaml")
    parents = [_phase("parent0", 2, 195, 1e6), _phase("parent1", 2, 195, 2e6)]
    growth = {"test_loss": 1.3, "test_acc": 0.42, "params": 395}
    return results(recipe, 1, parents, growth, _phase("grown", 2, 395, 3e6), ["ab"])


def test_the_results_hold_a_row_per_model_the_history_and_the_growth(outcome: dict) -> None:
    assert [r["model"] for r in outcome["rows"]] == ["parent 0", "parent 1", "grown, right after growth",
                                                     "grown, trained"]  # fmt: skip
    assert "flops" not in outcome["rows"][2] and outcome["total_flops"] == 6e6
    assert [(h["phase"], h["epoch"]) for h in outcome["history"]] == [
        ("parent0", 1), ("parent0", 2), ("parent1", 1), ("parent1", 2), ("grown", 1), ("grown", 2)
    ]  # fmt: skip
    summary = (outcome["name"], outcome["data"], outcome["world_size"], outcome["growth_epoch"])
    assert summary == ("tiny", "synthetic", 1, 2)
    assert list(outcome) == ["name", "data", "world_size", "rows", "total_flops", "parent_epochs", "grown_epochs",
                             "growth_epoch", "history", "fused_at_growth", "weights_sha256"]  # fmt: skip


def test_the_table_shows_parameters_accuracy_and_flops(outcome: dict) -> None:
    assert format_results(outcome) == "\n".join([
        "# tiny (synthetic)",
        "",
        "| model | parameters | test accuracy | training FLOPs |",
        "|---|---:|---:|---:|",
        "| parent 0 | 195 | 0.6000 | 1.000e+06 |",
        "| parent 1 | 195 | 0.6000 | 2.000e+06 |",
        "| grown, right after growth | 395 | 0.4200 | - |",
        "| grown, trained | 395 | 0.6000 | 3.000e+06 |",
        "| **total** | | | 6.000e+06 |",
    ])  # fmt: skip
    assert format_results({**outcome, "name": ""}).startswith("# growc train (synthetic)\n")


def test_the_outputs_are_written_metrics_first_to_last(outcome: dict, tmp_path: Path) -> None:
    rows = outcome["history"]
    write_results(tmp_path, outcome, rows)
    assert json.loads((tmp_path / "results.json").read_text()) == outcome
    assert (tmp_path / "results.md").read_text() == format_results(outcome) + "\n"
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == rows
    with open(tmp_path / "metrics.csv") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(METRICS_FIELDS) and len(table) == len(rows)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_metrics(tmp_path, [])
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [",".join(METRICS_FIELDS)]


def test_the_weights_sha256_covers_every_key_and_tensor() -> None:
    model = torch.nn.Linear(2, 2)
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    assert weights_sha256(model) == digest.hexdigest()
    with torch.no_grad():
        model.bias[0] += 1
    assert weights_sha256(model) != digest.hexdigest()

"""What a ``growc train`` run reports: the metrics of every epoch, the results, their table and plots.

Owns: :func:`write_metrics` (``metrics.jsonl`` and ``metrics.csv``), :func:`weights_sha256`, :func:`results` (the
run's results: a row per model with its parameters, accuracy and training FLOPs, the history, the growth),
:func:`format_results` (the markdown table), :func:`plot` (``curves.png``) and :func:`write_results`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from torch import nn

from growc.io import atomic_file, atomic_write_text
from growc.spec.recipe import RecipeSpec
from growc.train.files import writing

__all__ = ["METRICS_FIELDS", "format_results", "plot", "results", "weights_sha256", "write_metrics", "write_results"]

#: the columns of metrics.csv (metrics.jsonl holds the same records)
METRICS_FIELDS = ("phase", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")


def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    """``out/metrics.jsonl`` and ``out/metrics.csv``: a record per epoch, of every phase so far."""
    with writing(out / "metrics.jsonl"):
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRICS_FIELDS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with writing(out / "metrics.csv"):
        atomic_write_text(out / "metrics.csv", buffer.getvalue())


def weights_sha256(model: nn.Module) -> str:
    """The SHA-256 of ``model``'s state dict: each key and its tensor's bytes, in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def results(
    recipe: RecipeSpec,
    world: int,
    parents: list[dict[str, Any]],
    growth: dict[str, Any],
    grown: dict[str, Any],
    hashes: list[str],
) -> dict[str, Any]:
    """The run's results: its phases' records (``parents``, ``grown``), the growth's, the ranks' weight hashes."""
    rows = [
        {"model": f"parent {i}", "params": p["params"], "test_acc": p["test_acc"], "flops": p["flops"]["total"]}
        for i, p in enumerate(parents)
    ]
    rows.append({"model": "grown, right after growth", "params": growth["params"], "test_acc": growth["test_acc"]})
    rows.append({"model": "grown, trained", "params": grown["params"], "test_acc": grown["test_acc"],
                 "flops": grown["flops"]["total"]})  # fmt: skip
    return {
        "name": recipe.name,
        "data": recipe.data.name,
        "world_size": world,
        "rows": rows,
        "total_flops": sum(r.get("flops", 0.0) for r in rows),
        "parent_epochs": recipe.parents.epochs,
        "grown_epochs": recipe.grown.epochs,
        "growth_epoch": recipe.parents.epochs,
        "history": [*[h for p in parents for h in p["history"]], *grown["history"]],
        "fused_at_growth": growth,
        "weights_sha256": hashes,
    }


def format_results(results: dict[str, Any]) -> str:
    """The results table (markdown): accuracy, parameters and training FLOPs of each model."""
    lines = [
        f"# {results.get('name') or 'growc train'} ({results['data']})",
        "",
        "| model | parameters | test accuracy | training FLOPs |",
        "|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        flops = f"{row['flops']:.3e}" if "flops" in row else "-"
        lines.append(f"| {row['model']} | {row['params']:,} | {row['test_acc']:.4f} | {flops} |")
    lines.append(f"| **total** | | | {results['total_flops']:.3e} |")
    return "\n".join(lines)


def plot(out: Path, results: dict[str, Any]) -> None:
    """``out/curves.png``: test accuracy and training loss per epoch of each phase, the growth marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = results["history"]
    growth = results["growth_epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    try:
        for phase in sorted({h["phase"] for h in history}):
            rows = [h for h in history if h["phase"] == phase]
            offset = growth if phase == "grown" else 0
            xs = [offset + h["epoch"] for h in rows]
            axes[0].plot(xs, [h["test_acc"] for h in rows], marker=".", label=phase)
            axes[1].plot(xs, [h["train_loss"] for h in rows], marker=".", label=phase)
        axes[0].scatter([growth + 0.5], [results["fused_at_growth"]["test_acc"]], color="black", zorder=3,
                        label="right after growth")  # fmt: skip
        for ax, title in zip(axes, ("test accuracy", "training loss"), strict=True):
            ax.axvline(growth + 0.5, color="gray", linestyle="--")
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_file(out / "curves.png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def write_results(out: Path, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The run's outputs: ``results.json``, ``results.md``, the metrics (``rows``, every epoch) and
    ``curves.png``."""
    with writing(out / "results.json"):
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    with writing(out / "results.md"):
        atomic_write_text(out / "results.md", format_results(results) + "\n")
    write_metrics(out, rows)
    with writing(out / "curves.png"):
        plot(out, results)

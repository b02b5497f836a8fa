"""Is growing worth it? MixtureGrowth against the baselines at the same epoch budget, over several seeds.

Every method trains for the same schedule length, ``E = E_parent + E_grown`` epochs: from scratch (small or large
network) in one phase of ``E`` epochs; every growth method for ``E_parent`` epochs at the small width, then grows
and trains ``E_grown`` more epochs with a fresh cosine schedule at a smaller learning rate (the reference's shape).
All networks use the same template form (``sharing: shape``, K = 2, Kaiming templates and orthogonal coefficients),
so only the growth differs. Methods:

* ``small`` / ``large``: from scratch at the parents' and the grown width.
* ``mixturegrowth``: two parents with independent templates fused, orthogonal cross blocks (the method).
* ``mixturegrowth-zero``: the same with zero cross blocks.
* ``random``: one parent widened with fresh random templates and random cross blocks.
* ``net2net``: one parent widened by replication (function-preserving).
* ``ensemble``: the two parents side by side, no cross blocks (fusion without them), trained jointly.

Accuracy is the test accuracy after the last epoch, mean ± standard deviation over seeds; training FLOPs are
counted with ``torch.utils.flop_counter`` (the same accounting as ``growc train``; both parents count for the
methods that train two). Writes ``benchmarks/results/accuracy.json`` and ``accuracy.md`` and prints the table.

    python benchmarks/accuracy.py                  # mnist1d and digits, 3 seeds (about 3 minutes on 2 cores)
    python benchmarks/accuracy.py --quick          # a smoke run: 1 seed, 2 + 1 epochs
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import growc
from growc.io import atomic_write_text, write_json
from growc.models import resolve_model
from growc.models.datasets import load_data
from growc.spec.data import DataSpec
from growc.spec.recipe import PhaseSpec
from growc.train import fit

ROOT = Path(__file__).resolve().parent
METHODS = ["small", "large", "mixturegrowth", "mixturegrowth-zero", "random", "net2net", "ensemble"]
TEMPLATES = {"sharing": "shape", "templates": 2, "init": "fresh"}

CONFIGS: dict[str, dict[str, Any]] = {
    "mnist1d": {
        "data": {"name": "mnist1d", "samples": 5000},
        "model": "growc.models:CNN1d",
        "small": {"width": 16, "num_classes": 10},
        "large": {"width": 32, "num_classes": 10},
        "epochs": (12, 6),
        "batch_size": 64,
        "lr": (0.05, 0.01),
    },
    "digits": {
        "data": {"name": "digits", "test_fraction": 0.25},
        "model": "growc.models:WideResNet",
        "small": {"depth": 10, "width": 0.5, "num_classes": 10, "in_channels": 1},
        "large": {"depth": 10, "width": 1, "num_classes": 10, "in_channels": 1},
        "epochs": (10, 5),
        "batch_size": 64,
        "lr": (0.05, 0.01),
    },
}


class SideBySide(nn.Module):
    """Fusion without cross blocks: the parents run side by side and their logits add up."""

    def __init__(self, parents: list[nn.Module]) -> None:
        super().__init__()
        self.parents = nn.ModuleList(parents)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(p(x) for p in self.parents)  # type: ignore[return-value]


def _phase(epochs: int, batch: int, lr: float, warmup: float) -> PhaseSpec:
    return PhaseSpec.model_validate(
        {
            "epochs": epochs,
            "batch_size": batch,
            "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"kind": "cosine", "warmup_epochs": warmup},
        }
    )


def _templated(config: dict[str, Any], size: str, seed: int, example: torch.Tensor) -> nn.Module:
    torch.manual_seed(seed)
    model = resolve_model(config["model"], **config[size])
    return growc.templatize(model, (example,), seed=seed, verify=False, **TEMPLATES)


def run_seed(name: str, config: dict[str, Any], seed: int, quick: bool) -> dict[str, dict[str, float]]:
    data = load_data(DataSpec.model_validate(config["data"]))
    e_parent, e_grown = (2, 1) if quick else config["epochs"]
    lr_parent, lr_grown = config["lr"]
    batch = config["batch_size"]
    example = data.x[:4]
    scratch = _phase(e_parent + e_grown, batch, lr_parent, 1 if not quick else 0)
    parent_phase = _phase(e_parent, batch, lr_parent, 1 if not quick else 0)
    grown_phase = _phase(e_grown, batch, lr_grown, 0)
    out: dict[str, dict[str, float]] = {}

    def record(method: str, final: dict[str, Any], flops: float, start: float) -> None:
        out[method] = {"acc": final["test_acc"], "flops": flops, "params": final["params"],
                       "seconds": time.perf_counter() - start}  # fmt: skip
        print(f"  {name} seed {seed} {method:<20} acc {final['test_acc']:.4f}  flops {flops:.3e}", flush=True)

    for size, method in (("small", "small"), ("large", "large")):
        start = time.perf_counter()
        model = _templated(config, size, seed, example)
        done = fit(model, data, scratch, seed=seed, phase_index=0, name=method)
        record(method, done, done["flops"]["total"], start)

    start = time.perf_counter()
    parents, parent_flops = [], []
    for i in range(2):
        model = _templated(config, "small", seed * 10 + i, example)
        done = fit(model, data, parent_phase, seed=seed, phase_index=i, name=f"parent{i}")
        parents.append(model)
        parent_flops.append(done["flops"]["total"])
    parents_seconds = time.perf_counter() - start

    def grown(method: str, model: nn.Module, trained_parents: int) -> None:
        start = time.perf_counter() - parents_seconds * trained_parents / 2
        done = fit(model, data, grown_phase, seed=seed, phase_index=2, name=method)
        record(method, done, sum(parent_flops[:trained_parents]) + done["flops"]["total"], start)

    pair = [copy.deepcopy(p).eval() for p in parents]
    grown("mixturegrowth", growc.fuse(pair, (example,), cross_init="orthogonal", seed=seed, verify=False).train(), 2)
    grown("mixturegrowth-zero", growc.fuse(pair, (example,), cross_init="zero", seed=seed, verify=False).train(), 2)
    one = copy.deepcopy(parents[0]).eval()
    grown("random", growc.widen(one, (example,), method="random", seed=seed, verify=False).train(), 1)
    grown("net2net", growc.widen(one, (example,), method="net2net", seed=seed, verify=False).train(), 1)
    grown("ensemble", SideBySide([copy.deepcopy(p) for p in parents]).train(), 2)
    return out


def summarize(runs: dict[str, list[dict[str, dict[str, float]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, seeds in runs.items():
        summary[name] = {}
        for method in METHODS:
            accs = [s[method]["acc"] for s in seeds]
            summary[name][method] = {
                "acc_mean": statistics.fmean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "flops": statistics.fmean(s[method]["flops"] for s in seeds),
                "params": seeds[0][method]["params"],
                "seeds": len(accs),
                "accs": accs,
            }
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = []
    for name, methods in summary.items():
        large = methods["large"]["flops"]
        lines += [
            f"**{name}** ({methods['small']['seeds']} seeds)",
            "",
            "| method | test accuracy | parameters | training FLOPs | FLOPs vs large |",
            "|---|---:|---:|---:|---:|",
        ]
        for method in METHODS:
            m = methods[method]
            lines.append(
                f"| {method} | {100 * m['acc_mean']:.2f} ± {100 * m['acc_std']:.2f} | {m['params']:,} | "
                f"{m['flops']:.3e} | {m['flops'] / large:.2f}x |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 + 1 epochs: a smoke run")
    parser.add_argument("--out", default=str(ROOT / "results"), help="folder for accuracy.json and accuracy.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    seeds = 1 if args.quick else args.seeds
    runs = {name: [run_seed(name, CONFIGS[name], seed, args.quick) for seed in range(seeds)] for name in args.data}
    summary = summarize(runs)
    text = table(summary)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads()}
    write_json(out / "accuracy.json", {"summary": summary, "runs": runs, **meta})
    atomic_write_text(out / "accuracy.md", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

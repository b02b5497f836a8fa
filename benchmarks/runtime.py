"""Runtime of template-mixed and grown networks against plain ones, measured side by side in one run.

For each model family (WRN-16-8 on CIFAR shapes at batch 32; ResNet-50 at batch 8 and 224x224):

* ``plain``: the plain network (``wrn-16-8`` / ``resnet-50-1``);
* ``templatized``: the same network with every weight generated from templates (``sharing: shape``, K = 2);
* ``grown``: two half-width parents (``wrn-16-4`` / ``resnet-50-0.5``) fused by MixtureGrowth (orthogonal cross
  blocks), growc's weight generation (weights written in place, one autograd node per bank group per step);
* ``block loop``: the same grown network generating its weights the way the reference code does: a Python loop over
  blocks, each block a multiply-and-sum of its templates, then horizontal and vertical concatenation.

It reports the median training step (forward, cross-entropy, backward, SGD step), the eval forward after
``materialize`` (against the plain network; for WRN the grown network's stem is twice as wide, so the materialized
templatized network, which has exactly the plain shapes, is the 1.00x check), and weight generation alone (all
weights of the grown network, forward and backward from dense gradients) against the block loop. Variants run
round-robin, one step each per round, so they see the same machine load. On a GPU (when present) the same runs
are timed with CUDA events, plus ``torch.compile``.

    python benchmarks/runtime.py                # CPU (and CUDA when present); writes results/runtime.{json,md}
    python benchmarks/runtime.py --quick        # fewer repeats
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import growc
from growc.io import atomic_write_text, write_json
from growc.models import resolve_model
from growc.runtime.layers import GRID_TYPES
from growc.runtime.markers import begin_step, end_step, strip_step_markers

ROOT = Path(__file__).resolve().parent
FAMILIES = {
    "wrn-16-8": {"plain": "wrn-16-8", "half": "wrn-16-4", "batch": 32, "size": 32, "classes": 10},
    "resnet-50": {"plain": "resnet-50-1", "half": "resnet-50-0.5", "batch": 8, "size": 224, "classes": 1000},
}
TEMPLATES = {"sharing": "shape", "templates": 2, "init": "fresh"}


def _block_loop_weight(self: nn.Module) -> torch.Tensor:
    """The reference's way: a Python loop over blocks, each a multiply-and-sum of templates, then two concats."""
    rows = []
    for row in self.blocks:
        columns = []
        for terms in row:
            block = None
            for bank, index in terms:
                alpha = bank.coefficients[index]
                templates = bank.templates
                part = (alpha.view(-1, *[1] * (templates.dim() - 1)) * templates).sum(0)
                block = part if block is None else block + part
            columns.append(block)
        rows.append(torch.cat(columns, dim=1))
    weight = torch.cat(rows, dim=0)
    return weight * self.scale if self.scale != 1.0 else weight


def block_loop(grown: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of ``grown`` whose grid layers generate their weights with the reference's block loop."""
    out = copy.deepcopy(grown)
    strip_step_markers(out.graph)
    out.recompile()
    for module in out.modules():
        if isinstance(module, GRID_TYPES):
            cls = type(module)
            module.__class__ = type(f"BlockLoop{cls.__name__}", (cls,), {"weight": property(_block_loop_weight)})
    return out


def build(family: dict[str, Any], device: torch.device) -> dict[str, nn.Module]:
    size = family["size"]
    x = torch.randn(2, 3, size, size)
    torch.manual_seed(0)
    plain = resolve_model(family["plain"], num_classes=family["classes"])
    templatized = growc.templatize(plain, (x,), verify=False, **TEMPLATES)
    parents = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        parents.append(growc.templatize(resolve_model(family["half"], num_classes=family["classes"]), (x,),
                                        seed=seed, verify=False, **TEMPLATES))  # fmt: skip
    grown = growc.fuse(parents, (x,), cross_init="orthogonal", verify=False)
    models = {"plain": plain, "templatized": templatized, "grown": grown, "block loop": block_loop(grown)}
    return {name: m.to(device).train() for name, m in models.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(stop) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def round_robin(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn, device))
    return {name: {"median": statistics.median(v), "samples": v} for name, v in samples.items()}


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(growc.param_groups(model, 5e-4), lr=1e-4, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def generation(model: nn.Module, batched: bool) -> Callable[[], None]:
    """All grid weights forward, then backward from dense gradients (what the convolutions' backward hands over;
    a ``.sum()`` would give stride-0 gradients that cost nothing to read)."""
    grids = [m for m in model.modules() if isinstance(m, GRID_TYPES)]
    banks = getattr(model, "growc_banks", None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        grads = [torch.randn(m.weight.shape, generator=generator).to(m.weight.device) for m in grids]

    def generate() -> None:
        model.zero_grad(set_to_none=True)
        if batched and banks is not None:
            begin_step(banks)
        weights = [m.weight for m in grids]
        if batched and banks is not None:
            end_step(banks)
        torch.autograd.backward(weights, grads)

    return generate


def run_family(name: str, family: dict[str, Any], device: torch.device, quick: bool, compile_: bool) -> dict[str, Any]:
    models = build(family, device)
    batch, size = family["batch"], family["size"]
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, family["classes"], (batch,), device=device)
    repeats = (3 if quick else 11) if name == "resnet-50" else (5 if quick else 15)
    steps = {k: train_step(m, x, y) for k, m in models.items()}
    if compile_:
        steps["grown (compiled)"] = train_step(torch.compile(models["grown"]), x, y)
        steps["plain (compiled)"] = train_step(torch.compile(models["plain"]), x, y)
    train = round_robin(steps, device, warmup=2, repeats=repeats)
    generated = round_robin(
        {"batched": generation(models["grown"], True), "block loop": generation(models["block loop"], False)},
        device, warmup=2, repeats=repeats * 2,
    )  # fmt: skip
    plain = models["plain"].eval()
    materialized = {
        "plain": plain,
        "materialized templatized": growc.materialize(models["templatized"]).eval(),
        "materialized grown": growc.materialize(models["grown"]).eval(),
    }

    def forward(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(x)

        return run

    inference = round_robin({k: forward(m) for k, m in materialized.items()}, device, warmup=2, repeats=repeats)
    base, base_inf = train["plain"]["median"], inference["plain"]["median"]
    return {
        "device": str(device),
        "batch": batch,
        "input": [batch, 3, size, size],
        "train": {k: {"median_s": v["median"], "ratio": v["median"] / base} for k, v in train.items()},
        "generation": {
            "batched_s": generated["batched"]["median"],
            "block_loop_s": generated["block loop"]["median"],
            "speedup": generated["block loop"]["median"] / generated["batched"]["median"],
        },
        "inference": {k: {"median_s": v["median"], "ratio": v["median"] / base_inf} for k, v in inference.items()},
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items() if k != "block loop"},
        "repeats": repeats,
    }


def table(results: dict[str, Any]) -> str:
    lines = []
    for key, r in results.items():
        lines += [f"**{key}** ({r['device']}, input {'x'.join(map(str, r['input']))}, median of {r['repeats']})", ""]
        lines += ["| training step | median | vs plain |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['median_s'] * 1000:.1f} ms | {v['ratio']:.3f}x |" for k, v in r["train"].items()]
        g = r["generation"]
        lines += ["", "| weight generation (all layers, fwd+bwd) | median |", "|---|---:|"]
        lines += [f"| growc (in place, one node per bank group) | {g['batched_s'] * 1000:.2f} ms |",
                  f"| block loop (reference) | {g['block_loop_s'] * 1000:.2f} ms |",
                  f"| speedup | {g['speedup']:.2f}x |"]  # fmt: skip
        lines += ["", "| eval forward | median | vs plain |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['median_s'] * 1000:.1f} ms | {v['ratio']:.3f}x |" for k, v in r["inference"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps on CPU")
    parser.add_argument("--no-cpu", action="store_true", help="CUDA only")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    devices = [] if args.no_cpu else [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    results = {}
    for device in devices:
        for name in args.families:
            key = f"{name} {device.type}"
            print(f"running {key} ...", flush=True)
            results[key] = run_family(name, FAMILIES[name], device, args.quick, args.compile or device.type == "cuda")
    text = table(results)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick}
    write_json(out / "runtime.json", {"results": results, **meta})
    atomic_write_text(out / "runtime.md", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

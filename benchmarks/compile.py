"""Compile-time and weight-generation benchmark (issue 2).

Times, per model (median of --repeats runs, CPU): torch.fx trace, meta shape analysis, and the whole
``templatize(..., verify=False)`` (trace + analysis + rewrite + bank init), plus the optional output check
(``verify=True`` adds two real forward passes) measured separately. Then one training step (forward, backward,
SGD step) of plain vs templatized ResNet-18, interleaved step by step so both see the same machine load.

    python benchmarks/compile.py                 # full run, writes benchmarks/results/compile.json
    python benchmarks/compile.py --quick         # small inputs, fewer repeats: a smoke run

    python benchmarks/compile.py --capture-only  # only the fx vs export capture table

Capture (issue 13): fx vs ``torch.export`` capture and ``templatize`` (verify off) side by side, interleaved, for
ResNet-50, a 12-layer BERT-base-sized config (transformers, random weights; fx cannot trace it) and ViT-B/16.
Target: export capture + templatize of the BERT-base config <= 10 s on 2 CPU cores.

Targets: ResNet-50 templatize < 0.5 s on 2 CPU cores; templatized ResNet-18 training step <= 1.10x plain; fusing
two ResNet-50s < 1 s ("plain parents" includes templatizing both; "templatized parents" is the fuse pass alone).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

import growc

MODELS = ["resnet18", "resnet50", "densenet121", "efficientnet_b0", "regnet_y_400mf", "mobilenet_v3_large"]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_times(name: str, size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    x = torch.randn(1, 3, size, size)
    growc.templatize(model, (x,), verify=False)  # warm-up (imports, first-call caches)
    traced = growc.trace(model)
    return {
        "trace_s": _median_time(lambda: growc.trace(model), repeats),
        "analysis_s": _median_time(lambda: growc.propagate_shapes(traced, (x,)), repeats),
        "templatize_s": _median_time(lambda: growc.templatize(model, (x,), verify=False), repeats),
        "verify_s": _median_time(lambda: growc.templatize(model, (x,), verify=True), repeats)
        - _median_time(lambda: growc.templatize(model, (x,), verify=False), repeats),
        "nodes": len(traced.graph.nodes),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def _capture_models(quick: bool) -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    """ResNet-50 and ViT-B/16 (torchvision) and a BERT-base-sized BertModel (12 layers, hidden 768; --quick: 2
    layers), all with random weights, eval mode."""
    import transformers

    torch.manual_seed(0)
    size = 64 if quick else 224
    layers = 2 if quick else 12
    bert = transformers.BertModel(transformers.BertConfig(num_hidden_layers=layers)).eval()
    ids = torch.randint(0, bert.config.vocab_size, (2, 128))
    return {
        "resnet50": (torchvision.models.resnet50(weights=None).eval(), (torch.randn(2, 3, size, size),)),
        f"bert-base ({layers} layers)": (bert, (ids, torch.ones_like(ids))),
        "vit_b_16": (
            torchvision.models.vit_b_16(weights=None, image_size=size).eval(),
            (torch.randn(2, 3, size, size),),
        ),
    }


def _timed(fn) -> tuple[float, str | None]:
    start = time.perf_counter()
    try:
        fn()
    except growc.GrowcTraceError as error:
        return float("nan"), str(error).splitlines()[0][:120]
    return time.perf_counter() - start, None


def capture_times(quick: bool, repeats: int) -> dict[str, dict[str, object]]:
    """Per model, medians over ``repeats`` interleaved rounds of fx and export capture and templatize, with
    the min-max spread; a strategy that cannot capture the model is reported with its error."""
    results: dict[str, dict[str, object]] = {}
    for name, (model, inputs) in _capture_models(quick).items():
        runs = {
            "fx capture": lambda m=model, x=inputs: growc.trace(m, x, capture="fx"),
            "export capture": lambda m=model, x=inputs: growc.trace(m, x, capture="export"),
            "fx templatize": lambda m=model, x=inputs: growc.templatize(m, x, capture="fx", verify=False),
            "export templatize": lambda m=model, x=inputs: growc.templatize(m, x, capture="export", verify=False),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        errors: dict[str, str] = {}
        for _ in range(repeats):  # interleaved: each round runs every variant once
            for key, fn in runs.items():
                if key.split()[0] in {e.split()[0] for e in errors}:
                    continue
                seconds, error = _timed(fn)
                if error is not None:
                    errors[key] = error
                else:
                    times[key].append(seconds)
        row: dict[str, object] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "errors": errors}
        for key, values in times.items():
            row[key] = (
                {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "n": len(values)}
                if values
                else None
            )
        results[name] = row
    return results


def _print_capture(results: dict[str, dict[str, object]], repeats: int) -> None:
    keys = ("fx capture", "export capture", "fx templatize", "export templatize")
    print(f"\ncapture, median of {repeats} interleaved rounds [min-max], {torch.get_num_threads()} threads")
    print(f"{'model':<24} {'params':>7} " + " ".join(f"{k:>24}" for k in keys))
    for name, row in results.items():
        cells = []
        for key in keys:
            r = row[key]
            cells.append("fails" if r is None else f"{r['median_s']:.2f}s [{r['min_s']:.2f}-{r['max_s']:.2f}]")
        print(f"{name:<24} {row['params_m']:>6.1f}M " + " ".join(f"{c:>24}" for c in cells))
        for key, error in row["errors"].items():
            print(f"    {key}: {error}")


def fuse_times(name: str, size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    a, b = (torchvision.models.get_model(name, weights=None) for _ in range(2))
    x = torch.randn(1, 3, size, size)
    ta = growc.templatize(a, (x,), verify=False)
    tb = growc.templatize(b, (x,), verify=False, seed=1)
    growc.fuse([ta, tb], (x,), verify=False)  # warm-up
    return {
        "fuse_templatized_s": _median_time(lambda: growc.fuse([ta, tb], (x,), verify=False), repeats),
        "fuse_plain_s": _median_time(lambda: growc.fuse([a, b], (x,), verify=False), repeats),
    }


def training_step(batch: int, size: int, steps: int, sharing: str) -> dict[str, float]:
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(weights=None)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    mixed = growc.templatize(plain, (x[:1],), sharing=sharing, verify=False)
    models = {"plain": plain, "templatized": mixed}
    optimizers = {k: torch.optim.SGD(growc.param_groups(m, 5e-4), lr=0.01, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}

    def step(key: str) -> None:
        model, optimizer = models[key], optimizers[key]
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for key in models:  # warm-up
        step(key)
    for i in range(steps):
        for key in ("plain", "templatized") if i % 2 == 0 else ("templatized", "plain"):
            start = time.perf_counter()
            step(key)
            times[key].append(time.perf_counter() - start)
    plain_s = statistics.median(times["plain"])
    mixed_s = statistics.median(times["templatized"])
    return {"plain_s": plain_s, "templatized_s": mixed_s, "ratio": mixed_s / plain_s, "sharing": sharing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and few repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="input resolution for compile timing")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--step-size", type=int, default=224, help="input resolution for the training step")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile.json"))
    parser.add_argument("--capture-only", action="store_true", help="only the fx vs export capture table")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.size, args.step_size, args.steps, args.batch = 2, 64, 64, 3, 8

    results: dict[str, object] = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "args": vars(args),
        "compile": {},
        "training_step": [],
    }
    results["capture"] = capture_times(args.quick, max(args.repeats, 3) if not args.quick else 1)
    _print_capture(results["capture"], max(args.repeats, 3) if not args.quick else 1)  # type: ignore[arg-type]
    if args.capture_only:
        _write(results, Path(args.out))
        return
    print(
        f"compile time, median of {args.repeats}, input 1x3x{args.size}x{args.size}, {torch.get_num_threads()} threads"
    )
    print(f"{'model':<20} {'nodes':>5} {'params':>8} {'trace':>8} {'analysis':>9} {'templatize':>11} {'verify':>8}")
    for name in MODELS:
        r = compile_times(name, args.size, args.repeats)
        results["compile"][name] = r  # type: ignore[index]
        print(
            f"{name:<20} {r['nodes']:>5} {r['params_m']:>7.1f}M {r['trace_s']:>7.3f}s {r['analysis_s']:>8.3f}s "
            f"{r['templatize_s']:>10.3f}s {r['verify_s']:>7.3f}s"
        )
    print(f"\nfuse two parents, median of {args.repeats}, input 1x3x{args.size}x{args.size}")
    print(f"{'model':<20} {'templatized parents':>20} {'plain parents':>14}")
    results["fuse"] = {}
    for name in ("resnet18", "resnet50"):
        r = fuse_times(name, args.size, args.repeats)
        results["fuse"][name] = r  # type: ignore[index]
        print(f"{name:<20} {r['fuse_templatized_s']:>19.3f}s {r['fuse_plain_s']:>13.3f}s")
    print(f"\ntraining step, ResNet-18, batch {args.batch}, {args.step_size}x{args.step_size}, median of {args.steps}")
    print(f"{'sharing':<8} {'plain':>8} {'templatized':>12} {'ratio':>6}")
    for sharing in ("layer", "shape"):
        r = training_step(args.batch, args.step_size, args.steps, sharing)
        results["training_step"].append(r)  # type: ignore[union-attr]
        print(f"{sharing:<8} {r['plain_s']:>7.3f}s {r['templatized_s']:>11.3f}s {r['ratio']:>6.3f}")
    _write(results, Path(args.out))


def _write(results: dict[str, object], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

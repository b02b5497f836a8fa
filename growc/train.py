"""``growc train``: run a recipe's phases (train two parents, grow, keep training) with checkpoints and resume.

The run folder (``output.folder`` or ``--out``) holds everything::

    run.json              the recipe's fingerprint (a folder only resumes the recipe that started it)
    recipe.yaml           the resolved recipe
    parent0/ parent1/     model.safetensors (the trained templatized parent), done.json; checkpoint/ while running
    grown-artifact/       the growth's artifact (growc.load reads it), grow.json (accuracy right after growth)
    grown/                the continued training's checkpoint and done.json
    final/                the trained grown network as an artifact (growc.load reads it)
    metrics.jsonl, metrics.csv, results.json, results.md, curves.png

Every epoch of every phase is seeded from (seed, phase, epoch) alone: batch order, augmentation and dropout do not
depend on what ran before, so a run resumed from a checkpoint (model, optimizer state, step, history) ends with the
same weights as an uninterrupted one. Checkpoints are folders written atomically; killing the process at any
point loses at most the epochs since the last checkpoint.

Under ``torchrun --nproc_per_node N`` the same command trains with DistributedDataParallel (gloo on CPU, nccl on
GPU): each global batch is split over the ranks, rank 0 alone shows progress and writes outputs, checkpoints hold
the unwrapped model and resume on any world size, and at the end the ranks' weights are compared (they must be
identical).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

from .build import example_input, grow, load, write_artifact
from .data import Dataset, load_data
from .errors import GrowcError
from .io import atomic_directory, atomic_file, atomic_write_text, load_into, load_state_dict, save_tensors, write_json
from .ops import param_groups
from .recipe import PhaseSpec, RecipeSpec, growth_spec, load_recipe, lr_at
from .spec import GrowthSpec, load_spec

__all__ = ["StoppedEarly", "count_training_flops", "fit", "format_results", "train"]


class StoppedEarly(Exception):
    """Raised (and caught by the CLI) when ``stop_after`` epochs ran in this invocation."""


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics): DDP broadcasts them at the start of each forward,
        so after an epoch's last step each rank still holds the statistics of its own last shard."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def sum(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def _setup_distributed() -> tuple[_Dist, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), False
    if dist.is_initialized():
        started = False
    else:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), dist.get_world_size(), device), started


def _epoch_seed(seed: int, phase: int, epoch: int) -> int:
    return (seed * 1_000_003 + phase * 10_007 + epoch * 101 + 17) % (2**62)


def _fingerprint(recipe: RecipeSpec, spec: GrowthSpec) -> str:
    """What a run folder belongs to: the recipe (but where it writes) and the growth spec it uses, resolved."""
    data = {"recipe": recipe.model_dump(mode="json", exclude={"output"}), "growth": spec.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise GrowcError(f"'{path}' is damaged ({error}): delete it (or its phase folder) to redo that part") from None
    if not isinstance(data, dict):
        raise GrowcError(f"'{path}' is damaged (not a JSON object): delete it (or its phase folder) to redo that part")
    return data


# ------------------------------------------------------------------------------------- optimizer state, no pickle


def _flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, prefix, tensors), _flatten(v, prefix, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, prefix, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise GrowcError(f"cannot checkpoint optimizer state of type {type(value).__name__}")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def _save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(optimizer.state_dict(), "", tensors)
    with atomic_directory(folder, overwrite=True) as tmp:
        save_tensors({k: v for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        save_tensors(tensors or {"_": torch.zeros(0)}, tmp / "optimizer.safetensors")
        write_json(tmp / "optimizer.json", structure)
        write_json(tmp / "state.json", state)


def _load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Any]:
    try:
        state = json.loads((folder / "state.json").read_text())
        structure = json.loads((folder / "optimizer.json").read_text())
    except (OSError, ValueError) as error:
        raise GrowcError(f"checkpoint '{folder}' is damaged: {error}; delete it to restart this phase") from None
    load_into(model, load_state_dict(folder / "model.safetensors"), f"checkpoint '{folder}'")
    tensors = {k: v.to(device) for k, v in load_state_dict(folder / "optimizer.safetensors").items()}
    optimizer.load_state_dict(_unflatten(structure, tensors))
    return state


# ---------------------------------------------------------------------------------------------------- FLOPs


def count_training_flops(model: nn.Module, sample_shape: tuple[int, ...], num_classes: int) -> dict[str, float]:
    """FLOPs of one training step (forward, cross-entropy, backward) with ``torch.utils.flop_counter``.

    Measured at batch sizes 2 and 4 on a copy of ``model``: ``per_sample`` scales with the batch, ``per_step`` does
    not (generating weights from templates happens once per step). Returns both.
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).train()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    counts = []
    for batch in (2, 4):
        x = torch.randn(batch, *sample_shape, device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device) % num_classes
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(probe(x), y).backward()
        counts.append(float(counter.get_total_flops()))
        probe.zero_grad(set_to_none=True)
    per_sample = (counts[1] - counts[0]) / 2
    return {"per_sample": per_sample, "per_step": max(0.0, counts[0] - 2 * per_sample)}


# ---------------------------------------------------------------------------------------------------- training


class _Loop:
    """The training loop of one phase (optionally checkpointed into a folder)."""

    def __init__(
        self,
        data: Dataset,
        *,
        seed: int,
        eval_batch_size: int = 512,
        every: int = 1,
        stop_after: int | None = None,
        progress: bool = True,
    ) -> None:
        self.data = data
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.every = every
        self.stop_after = stop_after
        self.progress = progress
        self.epochs_run = 0
        self.dist, self.started_dist = _setup_distributed()

    def on_epoch(self, history: list[dict[str, Any]]) -> None:
        """Called after every epoch with the phase's history so far."""

    def close(self) -> None:
        if self.started_dist and dist.is_initialized():
            dist.destroy_process_group()

    def log(self, text: str) -> None:
        if self.dist.main:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def _steps_per_epoch(self, phase: PhaseSpec) -> int:
        n, b = self.data.train_size, phase.batch_size
        if b < self.dist.world:
            raise GrowcError(f"batch_size {b} is smaller than the {self.dist.world} ranks: each needs examples")
        steps = n // b + (1 if n % b >= self.dist.world else 0)
        if steps == 0:
            raise GrowcError(f"the training set has {n} example(s): too few for one step on {self.dist.world} rank(s)")
        return steps

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        was = model.training
        model.eval()
        loss_sum = correct = count = 0.0
        with torch.no_grad():
            for x, y in self.data.test_batches(self.eval_batch_size, self.dist.rank, self.dist.world):
                x, y = x.to(self.dist.device), y.to(self.dist.device)
                out = model(x)
                loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
                correct += float((out.argmax(1) == y).sum())
                count += len(y)
        model.train(was)
        loss_sum, correct, count = self.dist.sum(loss_sum, correct, count)
        return loss_sum / max(count, 1), correct / max(count, 1)

    # -- one training phase
    def train_phase(
        self, name: str, index: int, model: nn.Module, phase: PhaseSpec, folder: Path | None = None
    ) -> dict[str, Any]:
        """Train ``model`` for ``phase``; with ``folder``, checkpoint there, resume from it, and record the result."""
        done = folder / "done.json" if folder is not None else None
        if folder is not None and done is not None and done.is_file():
            record = _read_json(done)
            load_into(model, load_state_dict(folder / "model.safetensors"), f"'{folder / 'model.safetensors'}'")
            return record
        device = self.dist.device
        model.to(device)
        flops = count_training_flops(model, self.data.sample_shape, self.data.num_classes)
        groups = param_groups(model, weight_decay=phase.optimizer.weight_decay)
        o = phase.optimizer
        optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
            if o.name == "sgd"
            else torch.optim.AdamW(groups, lr=o.lr)
        )
        per_epoch = self._steps_per_epoch(phase)
        total = per_epoch * phase.epochs
        seen = min(self.data.train_size, per_epoch * phase.batch_size)  # a last batch smaller than the ranks is dropped
        history: list[dict[str, Any]] = []
        start = 0
        checkpoint = folder / "checkpoint" if folder is not None else None
        if checkpoint is not None and (checkpoint / "state.json").is_file():
            state = _load_checkpoint(checkpoint, model, optimizer, device)
            start, history = int(state["epoch"]), list(state["history"])
            self.log(f"{name}: resuming after epoch {start} from {checkpoint}")
        net: nn.Module = model
        if self.dist.world > 1:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        from tqdm import tqdm

        for epoch in range(start, phase.epochs):
            if self.stop_after is not None and self.epochs_run >= self.stop_after:
                raise StoppedEarly(f"stopped after {self.epochs_run} epoch(s) as asked; rerun the command to resume")
            t0 = time.perf_counter()
            seed = _epoch_seed(self.seed, index, epoch)
            torch.manual_seed(seed + 7919 * self.dist.rank)  # dropout and any other random op: one stream per rank
            order = torch.randperm(self.data.train_size, generator=torch.Generator().manual_seed(seed))
            augment = torch.Generator().manual_seed(seed + 1 + self.dist.rank)
            model.train()
            loss_sum = correct = count = 0.0
            bar = tqdm(
                total=per_epoch,
                desc=f"{name} {epoch + 1}/{phase.epochs}",
                leave=False,
                disable=not (self.progress and self.dist.main),
                file=sys.stderr,
            )
            for b in range(per_epoch):
                lr = lr_at(epoch * per_epoch + b, total, per_epoch, phase)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = order[b * phase.batch_size : (b + 1) * phase.batch_size][self.dist.rank :: self.dist.world]
                x, y = self.data.train_batch(batch, augment)
                x, y = x.to(device), y.to(device)
                out = net(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += float((out.detach().argmax(1) == y).sum())
                count += len(y)
                bar.update()
            bar.close()
            self.dist.sync_buffers(model)
            loss_sum, correct, count = self.dist.sum(loss_sum, correct, count)
            test_loss, test_acc = self.evaluate(model)
            record = {
                "phase": name,
                "epoch": epoch + 1,
                "lr": lr_at(epoch * per_epoch + per_epoch - 1, total, per_epoch, phase),
                "train_loss": loss_sum / count,
                "train_acc": correct / count,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            history.append(record)
            self.epochs_run += 1
            self.log(
                f"{name} epoch {epoch + 1}/{phase.epochs}: loss {record['train_loss']:.4f} train acc "
                f"{record['train_acc']:.4f} test acc {test_acc:.4f} ({record['seconds']:.1f} s)"
            )
            last = epoch + 1 == phase.epochs
            stopping = self.stop_after is not None and self.epochs_run >= self.stop_after
            due = (epoch + 1) % self.every == 0 or stopping
            if checkpoint is not None and self.dist.main and not last and due:
                _save_checkpoint(checkpoint, model, optimizer, {"phase": name, "epoch": epoch + 1, "history": history})
            self.on_epoch(history)
            self.dist.barrier()
        record = {
            "phase": name,
            "epochs": phase.epochs,
            "history": history,
            "params": sum(p.numel() for p in model.parameters()),
            "flops": {
                **flops,
                "steps": total,
                "samples": seen * phase.epochs,
                "ranks": self.dist.world,
                # each rank generates the weights once per step; the examples are split over the ranks
                "total": flops["per_step"] * total * self.dist.world + flops["per_sample"] * seen * phase.epochs,
            },
            "test_acc": history[-1]["test_acc"] if history else self.evaluate(model)[1],
        }
        if folder is not None and done is not None and checkpoint is not None and self.dist.main:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_file(folder / "model.safetensors") as tmp:
                save_tensors(dict(model.state_dict()), tmp)
            atomic_write_text(done, json.dumps(record, indent=2) + "\n")
            shutil.rmtree(checkpoint, ignore_errors=True)
        self.dist.barrier()
        return record


class _Trainer(_Loop):
    """A recipe's run: its phases in order, in a run folder."""

    def __init__(self, recipe: RecipeSpec, out: Path, stop_after: int | None, progress: bool) -> None:
        self.recipe = recipe
        self.out = out
        self.spec = growth_spec(recipe)
        data = load_data(recipe.data, recipe.base_dir)
        super().__init__(
            data,
            seed=recipe.seed,
            eval_batch_size=recipe.eval_batch_size,
            every=recipe.checkpoint.every,
            stop_after=stop_after,
            progress=progress,
        )

    def on_epoch(self, history: list[dict[str, Any]]) -> None:
        self.write_metrics(history)

    def write_metrics(self, current: list[dict[str, Any]]) -> None:
        if not self.dist.main:
            return
        rows = []
        for name in self.phase_names():
            done = self.out / name / "done.json"
            if done.is_file():
                rows += _read_json(done).get("history", [])
        rows += current
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        buffer = io.StringIO()
        fields = ["phase", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out / "metrics.csv", buffer.getvalue())

    def phase_names(self) -> list[str]:
        return [f"parent{i}" for i in range(len(self.spec.parents))] + ["grown"]

    def run(self) -> dict[str, Any]:
        from .build import _template_options, build_parent
        from .passes import templatize

        self.out.mkdir(parents=True, exist_ok=True)
        self._claim_folder()
        spec, x = self.spec, example_input(self.spec)
        parents = []
        for i in range(len(spec.parents)):
            model = build_parent(spec, i)
            model = templatize(model, (x,), seed=spec.seed + i, verify=False, **_template_options(spec))
            with torch.no_grad():
                classes = model.eval()(x).shape[-1]
            model.train(spec.trace.mode == "train")
            if classes != self.data.num_classes:
                raise spec.doc.error(
                    ("parents", i, "kwargs"),
                    f"parent {i} outputs {classes} classes; {self.recipe.data.name} has {self.data.num_classes}",
                )
            parents.append(self.train_phase(f"parent{i}", i, model, self.recipe.parents, self.out / f"parent{i}"))
        grown_spec = spec.model_copy(deep=True)
        grown_spec._doc = spec._doc
        for i, parent in enumerate(grown_spec.parents):
            parent.weights = str((self.out / f"parent{i}" / "model.safetensors").resolve())
        artifact = self.out / "grown-artifact"
        if self.dist.main and not (artifact / "grow.json").is_file():
            grow(grown_spec, artifact, overwrite=True)
        self.dist.barrier()
        model = load(artifact, trust_code=True).to(self.dist.device)  # this run's own artifact
        if (artifact / "grow.json").is_file():
            growth = _read_json(artifact / "grow.json")
        else:
            loss, acc = self.evaluate(model)
            growth = {"test_loss": loss, "test_acc": acc, "params": sum(p.numel() for p in model.parameters())}
            if self.dist.main:
                atomic_write_text(artifact / "grow.json", json.dumps(growth, indent=2) + "\n")
        index = len(spec.parents)
        grown = self.train_phase("grown", index, model, self.recipe.grown, self.out / "grown")
        final = self.out / "final"
        saved = load_spec(artifact / "spec.yaml")
        if self.dist.main and not (final / "report.json").is_file():  # a finished run's final artifact stays
            report = {"trained": {"recipe": str(self.recipe.doc.file), "phase": grown}, "name": saved.name}
            report = _artifact_report(artifact, report)
            write_artifact(final, saved, model.cpu(), example_input(saved), report, overwrite=True)
            model.to(self.dist.device)
        results = self._results(parents, growth, grown, model)
        if self.dist.main:
            write_json(self.out / "results.json", results)
            atomic_write_text(self.out / "results.md", format_results(results) + "\n")
            self.write_metrics([])
            _plot(self.out, results)
        self.dist.barrier()
        return results

    def _claim_folder(self) -> None:
        """Start a run folder, or check that it holds this recipe's run. Every rank reads before rank 0 writes (no
        rank can see a half-claimed folder), and all of them agree on the outcome."""
        fingerprint = _fingerprint(self.recipe, self.spec)
        run = self.out / "run.json"
        self.dist.barrier()
        recorded = _read_json(run).get("recipe_sha256") if run.is_file() else None
        self.dist.barrier()
        if recorded is not None and recorded != fingerprint:
            raise GrowcError(
                f"run folder '{self.out}' holds a run of a different recipe (or of this one, or its growth spec, "
                "before an edit): pass another --out, or delete the folder to start over"
            )
        if recorded is None and self.dist.main:
            from . import __version__

            atomic_write_text(
                self.out / "recipe.yaml",
                yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None),
            )
            write_json(run, {"recipe_sha256": fingerprint, "growc": __version__, "recipe": str(self.recipe.doc.file)})
        self.dist.barrier()

    def _results(
        self, parents: list[dict[str, Any]], growth: dict[str, Any], grown: dict[str, Any], model: nn.Module
    ) -> dict[str, Any]:
        rows = [
            {"model": f"parent {i}", "params": p["params"], "test_acc": p["test_acc"], "flops": p["flops"]["total"]}
            for i, p in enumerate(parents)
        ]
        rows.append({"model": "grown, right after growth", "params": growth["params"], "test_acc": growth["test_acc"]})
        rows.append({"model": "grown, trained", "params": grown["params"], "test_acc": grown["test_acc"],
                     "flops": grown["flops"]["total"]})  # fmt: skip
        results: dict[str, Any] = {
            "name": self.recipe.name,
            "data": self.recipe.data.name,
            "world_size": self.dist.world,
            "rows": rows,
            "total_flops": sum(r.get("flops", 0.0) for r in rows),
            "parent_epochs": self.recipe.parents.epochs,
            "grown_epochs": self.recipe.grown.epochs,
            "growth_epoch": self.recipe.parents.epochs,
            "history": [*[h for p in parents for h in p["history"]], *grown["history"]],
            "fused_at_growth": growth,
        }
        digest = hashlib.sha256()
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        hashes = [mine]
        if self.dist.world > 1:
            hashes = [""] * self.dist.world
            dist.all_gather_object(hashes, mine)
            if len(set(hashes)) != 1:
                raise GrowcError(f"the ranks' final weights differ (SHA-256 per rank: {hashes}): DDP went out of sync")
        results["weights_sha256"] = hashes
        return results


def _artifact_report(artifact: Path, extra: dict[str, Any]) -> dict[str, Any]:
    report = json.loads((artifact / "report.json").read_text())
    keep = {k: report[k] for k in ("parents", "steps", "params", "inputs", "seconds") if k in report}
    return {**keep, **extra}


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


def _plot(out: Path, results: dict[str, Any]) -> None:
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


def fit(
    model: nn.Module,
    data: Dataset,
    phase: PhaseSpec,
    *,
    seed: int = 0,
    phase_index: int = 0,
    name: str = "fit",
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``model`` in place for one phase, with the exact loop ``growc train`` uses (no run folder).

    Returns the phase record: ``history`` (per-epoch metrics), ``test_acc``, ``params`` and ``flops``.
    """
    loop = _Loop(data, seed=seed, progress=progress)
    try:
        return loop.train_phase(name, phase_index, model, phase)
    finally:
        loop.close()


def train(
    recipe: RecipeSpec | str | Path,
    out: str | Path | None = None,
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``recipe`` (a path or a loaded :class:`RecipeSpec`) into its run folder and return the results.

    Rerunning with the same folder resumes where the last run stopped. ``stop_after`` ends this invocation after
    that many epochs (raising :class:`StoppedEarly` after checkpointing), e.g. to split a run into time slices.
    """
    recipe = recipe if isinstance(recipe, RecipeSpec) else load_recipe(recipe)
    folder = Path(out) if out is not None else Path(recipe.output.folder)
    trainer = _Trainer(recipe, folder, stop_after, progress)
    try:
        return trainer.run()
    finally:
        trainer.close()

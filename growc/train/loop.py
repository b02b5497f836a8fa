"""``growc train``: run a recipe's phases (train two parents, grow, keep training) with checkpoints and resume.

Every epoch of every phase is seeded from (seed, phase, epoch) alone (:func:`epoch_seed`): batch order,
augmentation and dropout do not depend on what ran before, so a run resumed from a checkpoint (model, optimizer
state, step, history) ends with the same weights as an uninterrupted one. Killing the process at any point loses at
most the epochs since the last checkpoint (:mod:`growc.train.checkpoint`). The run folder and the records that let
a run resume are :mod:`growc.train.runfolder`'s; the reports :mod:`growc.train.report`'s. Anything growc did not
write the way it reads it is a located :class:`~growc.errors.GrowcError`, and a disk problem while writing a
:class:`~growc.errors.GrowcIOError` naming the path.

Under ``torchrun --nproc_per_node N`` the same command trains with DistributedDataParallel
(:mod:`growc.train.distributed`): each global batch is split over the ranks, rank 0 alone shows progress and writes
outputs, checkpoints hold the unwrapped model and resume on any world size, and at the end the ranks' weights are
compared (they must be identical).

Owns: :class:`Loop` (one phase: its optimizer, the epoch loop, evaluation, checkpoints), :class:`Trainer` (a
recipe's phases in order, in a run folder), :func:`fit` and :func:`train`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from growc.compile.build import build_parent, example_inputs, grow, load, template_options, write_artifact
from growc.errors import GrowcError
from growc.models.datasets import Dataset, load_data
from growc.runtime.groups import param_groups
from growc.spec.growth import load_spec
from growc.spec.recipe import OptimizerSpec, PhaseSpec, RecipeSpec, growth_spec, load_recipe, lr_at
from growc.train.checkpoint import Checkpoints
from growc.train.distributed import setup_distributed
from growc.train.files import writing
from growc.train.flops import count_training_flops, logits, phase_flops
from growc.train.report import format_results, results, weights_sha256, write_metrics, write_results
from growc.train.runfolder import PhaseFolder, RunFolder, fingerprint

# format_results is re-exported here for callers that import it from this module (growc.cli)
__all__ = ["Loop", "StoppedEarly", "Trainer", "epoch_seed", "fit", "format_results", "make_optimizer", "train"]


class StoppedEarly(Exception):
    """Raised (and caught by the CLI) when ``stop_after`` epochs ran in this invocation."""


def epoch_seed(seed: int, phase: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of phase number ``phase``: batch order, augmentation and dropout come from it."""
    return (seed * 1_000_003 + phase * 10_007 + epoch * 101 + 17) % (2**62)


def make_optimizer(groups: list[dict[str, Any]], o: OptimizerSpec) -> torch.optim.Optimizer:
    """The phase's optimizer over the parameter ``groups``: SGD (with momentum, optionally Nesterov) or AdamW."""
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr)


@dataclass
class _Phase:
    """One phase while it trains: what every epoch of it needs."""

    name: str
    index: int  # the phase's number in the recipe (seeds its epochs)
    spec: PhaseSpec
    model: nn.Module  # the unwrapped model (checkpoints and evaluation use it)
    net: nn.Module  # what the steps run: the model, in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    per_epoch: int  # steps per epoch
    checkpoints: Checkpoints | None

    @property
    def total(self) -> int:
        return self.per_epoch * self.spec.epochs


class Loop:
    """The training loop of one phase (optionally checkpointed into a folder).

    ``fingerprint`` is the recipe's: every checkpoint and finished phase records it. ``every``: checkpoint after
    every that many epochs; ``stop_after``: raise :class:`StoppedEarly` once that many epochs ran in this process.
    """

    def __init__(
        self,
        data: Dataset,
        *,
        seed: int,
        eval_batch_size: int = 512,
        every: int = 1,
        stop_after: int | None = None,
        progress: bool = True,
        fingerprint: str = "",
    ) -> None:
        self.data = data
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.every = every
        self.stop_after = stop_after
        self.progress = progress
        self.fingerprint = fingerprint
        self.epochs_run = 0
        self.dist = setup_distributed()

    def on_epoch(self, history: list[dict[str, Any]]) -> None:
        """Called after every epoch with the phase's history so far."""

    def close(self) -> None:
        """Leave the process group, if this loop joined it."""
        self.dist.close()

    def log(self, text: str) -> None:
        """A line on stderr (rank 0 only), above any progress bar."""
        if self.dist.main:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def steps_per_epoch(self, phase: PhaseSpec) -> int:
        """The steps of one epoch of ``phase`` (a last batch smaller than the ranks is dropped)."""
        n, b = self.data.train_size, phase.batch_size
        if b < self.dist.world:
            raise GrowcError(f"batch_size {b} is smaller than the {self.dist.world} ranks: each needs examples")
        steps = n // b + (1 if n % b >= self.dist.world else 0)
        if steps == 0:
            raise GrowcError(f"the training set has {n} example(s): too few for one step on {self.dist.world} rank(s)")
        return steps

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """``model``'s test loss and accuracy (sharded over the ranks, reduced)."""
        was = model.training
        model.eval()
        loss_sum = correct = count = 0.0
        with torch.no_grad():
            for x, y in self.data.test_batches(self.eval_batch_size, self.dist.rank, self.dist.world):
                x, y = x.to(self.dist.device), y.to(self.dist.device)
                out = logits(model(x))
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
        where = PhaseFolder(folder, self.fingerprint) if folder is not None else None
        if where is not None and where.done:
            record = where.reuse(name, phase.epochs, model)
            if self.dist.main:  # a run killed before it deleted the checkpoints (or all of their trash)
                where.discard_leftovers()
            return record
        model.to(self.dist.device)
        flops = count_training_flops(model, self.data.sample_shape, self.data.num_classes)
        optimizer = make_optimizer(param_groups(model, weight_decay=phase.optimizer.weight_decay), phase.optimizer)
        per_epoch = self.steps_per_epoch(phase)
        seen = min(self.data.train_size, per_epoch * phase.batch_size)  # a last batch smaller than the ranks is dropped
        history: list[dict[str, Any]] = []
        start = 0
        checkpoints = where.checkpoints(self.dist.device, self.log) if where is not None else None
        if checkpoints is not None:
            resumed = checkpoints.resume(name, phase.epochs, model, optimizer)
            if resumed is not None:
                start, history = resumed.epoch, resumed.history
        run = _Phase(name, index, phase, model, self.dist.wrap(model), optimizer, per_epoch, checkpoints)
        for epoch in range(start, phase.epochs):
            if self.stop_after is not None and self.epochs_run >= self.stop_after:
                raise StoppedEarly(f"stopped after {self.epochs_run} epoch(s) as asked; rerun the command to resume")
            history.append(self._epoch(run, epoch))
            self.epochs_run += 1
            self._after_epoch(run, history)
        record = {
            "phase": name,
            "epochs": phase.epochs,
            "history": history,
            "params": sum(p.numel() for p in model.parameters()),
            "flops": phase_flops(flops, steps=run.total, seen=seen, epochs=phase.epochs, ranks=self.dist.world),
            "test_acc": history[-1]["test_acc"] if history else self.evaluate(model)[1],
        }
        if where is not None and self.dist.main:
            where.finish(model, record)
        self.dist.barrier()
        return record

    def _epoch(self, run: _Phase, epoch: int) -> dict[str, Any]:
        """Train one epoch (seeded from the seed, the phase and the epoch alone), evaluate, and return its record."""
        t0 = time.perf_counter()
        seed = epoch_seed(self.seed, run.index, epoch)
        torch.manual_seed(seed + 7919 * self.dist.rank)  # dropout and any other random op: one stream per rank
        order = torch.randperm(self.data.train_size, generator=torch.Generator().manual_seed(seed))
        augment = torch.Generator().manual_seed(seed + 1 + self.dist.rank)
        run.model.train()
        loss_sum, correct, count = self._steps(run, epoch, order, augment)
        self.dist.sync_buffers(run.model)
        loss_sum, correct, count = self.dist.sum(loss_sum, correct, count)
        test_loss, test_acc = self.evaluate(run.model)
        phase, per_epoch = run.spec, run.per_epoch
        return {
            "phase": run.name,
            "epoch": epoch + 1,
            "lr": lr_at(epoch * per_epoch + per_epoch - 1, run.total, per_epoch, phase),
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def _steps(
        self, run: _Phase, epoch: int, order: torch.Tensor, augment: torch.Generator
    ) -> tuple[float, float, float]:
        """The steps of one epoch (this rank's share of each batch of ``order``): the loss summed over the examples,
        the examples right, the examples."""
        from tqdm import tqdm

        phase, per_epoch, optimizer = run.spec, run.per_epoch, run.optimizer
        device = self.dist.device
        loss_sum = correct = count = 0.0
        bar = tqdm(
            total=per_epoch,
            desc=f"{run.name} {epoch + 1}/{phase.epochs}",
            leave=False,
            disable=not (self.progress and self.dist.main),
            file=sys.stderr,
        )
        for b in range(per_epoch):
            lr = lr_at(epoch * per_epoch + b, run.total, per_epoch, phase)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = order[b * phase.batch_size : (b + 1) * phase.batch_size][self.dist.rank :: self.dist.world]
            x, y = self.data.train_batch(batch, augment)
            x, y = x.to(device), y.to(device)
            out = logits(run.net(x))
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += float((out.detach().argmax(1) == y).sum())
            count += len(y)
            bar.update()
        bar.close()
        return loss_sum, correct, count

    def _after_epoch(self, run: _Phase, history: list[dict[str, Any]]) -> None:
        """Say how the epoch went, checkpoint when one is due (not after the last epoch: the phase's result
        follows), and tell :meth:`on_epoch`."""
        record, epochs = history[-1], run.spec.epochs
        epoch = record["epoch"]
        self.log(
            f"{run.name} epoch {epoch}/{epochs}: loss {record['train_loss']:.4f} train acc "
            f"{record['train_acc']:.4f} test acc {record['test_acc']:.4f} ({record['seconds']:.1f} s)"
        )
        last = epoch == epochs
        stopping = self.stop_after is not None and self.epochs_run >= self.stop_after
        due = epoch % self.every == 0 or stopping
        if run.checkpoints is not None and self.dist.main and not last and due:
            run.checkpoints.save(run.name, epoch, run.model, run.optimizer, history)
        self.on_epoch(history)
        self.dist.barrier()


class Trainer(Loop):
    """A recipe's run: its phases in order, in a run folder (``out``, resolved)."""

    def __init__(self, recipe: RecipeSpec, out: Path, stop_after: int | None, progress: bool) -> None:
        self.recipe = recipe
        self.out = out
        self.spec = growth_spec(recipe)
        self.folder = RunFolder(out, fingerprint(recipe, self.spec), len(self.spec.parents))
        self.folder.check()  # before any work: loading the data, creating a folder
        self.records: dict[str, dict[str, Any]] = {}  # the finished phases' records, by name
        data = load_data(recipe.data, recipe.base_dir)
        super().__init__(
            data,
            seed=recipe.seed,
            eval_batch_size=recipe.eval_batch_size,
            every=recipe.checkpoint.every,
            stop_after=stop_after,
            progress=progress,
            fingerprint=self.folder.fingerprint,
        )

    def on_epoch(self, history: list[dict[str, Any]]) -> None:
        self.write_metrics(history)

    def _metrics(self, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every epoch so far: the finished phases', then ``current`` (the running phase's)."""
        names = self.folder.phase_names()
        return [row for name in names if name in self.records for row in self.records[name]["history"]] + current

    def write_metrics(self, current: list[dict[str, Any]]) -> None:
        """metrics.jsonl and metrics.csv, with the running phase's ``current`` history (rank 0 only)."""
        if self.dist.main:
            write_metrics(self.out, self._metrics(current))

    def run(self) -> dict[str, Any]:
        """The recipe's phases (the parents, the growth, the grown network), then the final artifact and reports."""
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        self.folder.claim(self.recipe, self.dist)
        parents = [self._train_parent(i) for i in range(len(self.spec.parents))]
        growth, model = self._grow()
        grown = self.train_phase("grown", len(self.spec.parents), model, self.recipe.grown, self.out / "grown")
        self.records["grown"] = grown
        self._write_final(model, grown)
        hashes = self._weights_sha256(model)
        outcome = results(self.recipe, self.dist.world, parents, growth, grown, hashes)
        if self.dist.main:
            write_results(self.out, outcome, self._metrics([]))
        self.dist.barrier()
        return outcome

    def _train_parent(self, i: int) -> dict[str, Any]:
        """Parent ``i``, built and templatized with the spec's template policy, trained for the parents' phase."""
        from growc.passes import templatize

        spec, xs = self.spec, example_inputs(self.spec)
        model = build_parent(spec, i)
        model = templatize(model, xs, seed=spec.seed + i, verify=False, **template_options(spec))
        with torch.no_grad():
            classes = logits(model.eval()(*xs)).shape[-1]
        model.train(spec.trace.mode == "train")
        if classes != self.data.num_classes:
            raise spec.doc.error(
                ("parents", i, "kwargs"),
                f"parent {i} outputs {classes} classes; {self.recipe.data.name} has {self.data.num_classes}",
            )
        name = f"parent{i}"
        self.records[name] = self.train_phase(name, i, model, self.recipe.parents, self.out / name)
        return self.records[name]

    def _grow(self) -> tuple[dict[str, Any], nn.Module]:
        """The growth of the trained parents (reused when grow.json records it): its record and the grown model."""
        grown_spec = self.spec.model_copy(deep=True)  # the copy keeps where each value came from
        for i, parent in enumerate(grown_spec.parents):
            parent.weights = str(self.out / f"parent{i}" / "model.safetensors")
        artifact = self.folder.artifact
        if self.folder.growth_recorded:  # every rank decides before rank 0 can write it
            growth = self.folder.reuse_growth()
            model = load(artifact, trust_code=True).to(self.dist.device)  # this run's own artifact, verified
            return growth, model
        if self.dist.main:
            with writing(artifact):
                grow(grown_spec, artifact, overwrite=True)  # replaces one a killed run left without grow.json
        self.dist.barrier()
        model = load(artifact, trust_code=True).to(self.dist.device)
        loss, acc = self.evaluate(model)
        growth = {"test_loss": loss, "test_acc": acc, "params": sum(p.numel() for p in model.parameters())}
        if self.dist.main:
            self.folder.record_growth(growth)
        return growth, model

    def _write_final(self, model: nn.Module, grown: dict[str, Any]) -> None:
        """final/: the trained grown network as an artifact; a finished run's is kept, once checked."""
        if not self.dist.main:
            return
        final, artifact = self.folder.final, self.folder.artifact
        saved = load_spec(artifact / "spec.yaml")
        if self.folder.finalized:  # a kept final artifact must hold exactly the weights the grown phase ended with
            self.folder.check_final(model)
            return
        report = {"trained": {"recipe": str(self.recipe.doc.file), "phase": grown}, "name": saved.name}
        report = self.folder.artifact_report(report)
        with writing(final):
            write_artifact(final, saved, model.cpu(), example_inputs(saved), report, overwrite=True)
        model.to(self.dist.device)

    def _weights_sha256(self, model: nn.Module) -> list[str]:
        """Each rank's SHA-256 of ``model``'s weights; they must be equal."""
        hashes = self.dist.gather(weights_sha256(model))
        if len(set(hashes)) != 1:
            raise GrowcError(f"the ranks' final weights differ (SHA-256 per rank: {hashes}): DDP went out of sync")
        return hashes


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
    loop = Loop(data, seed=seed, progress=progress)
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
    try:
        folder = Path(out if out is not None else recipe.output.folder).resolve()  # once: every check applies to it
    except (OSError, RuntimeError) as error:
        raise GrowcError(f"cannot resolve the run folder '{out or recipe.output.folder}': {error}") from None
    trainer = Trainer(recipe, folder, stop_after, progress)
    try:
        return trainer.run()
    finally:
        trainer.close()

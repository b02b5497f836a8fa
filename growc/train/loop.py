"""``growc train``: run a recipe's phases (train two parents, grow, keep training) with checkpoints and resume.

The run folder (``output.folder`` or ``--out``, resolved once) holds everything::

    run.json              "format": "growc-run" and the recipe's fingerprint (a folder only resumes its recipe)
    recipe.yaml           the resolved recipe
    parent0/ parent1/     model.safetensors (the trained templatized parent), done.json (its SHA-256, the history);
                          checkpoints/epoch-NNNN/ while running (the newest two)
    grown-artifact/       the growth's artifact (growc.load reads it), grow.json (accuracy right after growth, the
                          SHA-256 of every artifact file)
    grown/                the continued training's checkpoints, then model.safetensors and done.json
    final/                the trained grown network as an artifact (growc.load reads it)
    metrics.jsonl, metrics.csv, results.json, results.md, curves.png

A run folder is new, empty, or a run folder of the same recipe; anything else is refused before any work.

Every epoch of every phase is seeded from (seed, phase, epoch) alone: batch order, augmentation and dropout do not
depend on what ran before, so a run resumed from a checkpoint (model, optimizer state, step, history) ends with the
same weights as an uninterrupted one. Checkpoints are folders written atomically, each with a manifest (the SHA-256
of every file, the fingerprint, phase and epoch) verified on resume; the previous good one is kept, and a damaged
newest one falls back to it (saying so). Killing the process at any point loses at most the epochs since the last
checkpoint. Anything growc did not write the way it reads it is a located :class:`~growc.errors.GrowcError`, and a
disk problem while writing a :class:`~growc.errors.GrowcIOError` naming the path.

Under ``torchrun --nproc_per_node N`` the same command trains with DistributedDataParallel (gloo on CPU, nccl on
GPU): each global batch is split over the ranks, rank 0 alone shows progress and writes outputs, checkpoints hold
the unwrapped model and resume on any world size, and at the end the ranks' weights are compared (they must be
identical).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from growc.compile.build import example_input, grow, load, write_artifact
from growc.errors import GrowcError, GrowcIOError
from growc.io import (
    atomic_directory,
    atomic_file,
    atomic_write_text,
    load_into,
    parse_json,
    rename_no_replace,
    save_tensors,
    sha256_file,
)
from growc.models.datasets import Dataset, load_data
from growc.runtime.groups import param_groups
from growc.spec.growth import GrowthSpec, load_spec
from growc.spec.recipe import PhaseSpec, RecipeSpec, growth_spec, load_recipe, lr_at

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


RUN_FORMAT = "growc-run"
CHECKPOINT_FORMAT = "growc-checkpoint"
PHASE_FORMAT = "growc-phase"
GROWTH_FORMAT = "growc-growth"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "state.json")
_CHECKPOINT_NAME = re.compile(r"epoch-(\d+)")
# what growc writes at the top of a run folder: a folder holding any of these (but no run.json) is a damaged run
_RUN_ENTRY = re.compile(
    r"recipe\.yaml|parent\d+|grown|grown-artifact|final|metrics\.(jsonl|csv)|results\.(json|md)|curves\.png"
)
_RUN_JSON_TMP = ".run.json.tmp-"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HISTORY_NUMBERS = ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
_FLOPS_NUMBERS = ("per_sample", "per_step", "steps", "samples", "ranks", "total")


def _fingerprint(recipe: RecipeSpec, spec: GrowthSpec) -> str:
    """What a run folder belongs to: the recipe (but where it writes) and the growth spec it uses, resolved."""
    data = {"recipe": recipe.model_dump(mode="json", exclude={"output"}), "growth": spec.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------- reading what growc wrote, or not


class _Damaged(GrowcError):
    """A checkpoint that fails its integrity check (missing file, bytes unlike the manifest's): an earlier one is
    used instead, if there is one."""


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    """A JSON object growc wrote; anything else is a GrowcError naming ``path`` that ends with ``hint``."""
    try:
        data = parse_json(path.read_bytes())
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise GrowcError(f"'{path}' is damaged ({reason}): {hint}") from None
    if not isinstance(data, dict):
        raise GrowcError(f"'{path}' is damaged (not a JSON object): {hint}")
    return data


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class _Fields:
    """Typed reads of one JSON file growc wrote: every problem is a GrowcError naming the file and the key."""

    path: Path
    hint: str

    def error(self, key: str, problem: str) -> GrowcError:
        return GrowcError(f"'{self.path}', key '{key}': {problem}; {self.hint}")

    def get(self, data: Any, key: str, kind: str, prefix: str = "") -> Any:
        name = prefix + key
        if not isinstance(data, dict) or key not in data:
            raise self.error(name, "missing")
        value = data[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "list": isinstance(value, list),
            "object": isinstance(value, dict),
            "sha256": isinstance(value, str) and _SHA256.fullmatch(value) is not None,
        }[kind]
        if not ok:
            what = {"int": "an integer", "number": "a number", "str": "a string", "list": "a list",
                    "object": "an object", "sha256": "a SHA-256 (64 hex digits)"}[kind]  # fmt: skip
            raise self.error(name, f"expected {what}, got {_show(value)}")
        return value

    def equal(self, data: Any, key: str, kind: str, want: Any, problem: str | None = None) -> Any:
        value = self.get(data, key, kind)
        if value != want:
            raise self.error(key, problem or f"{_show(value)}, expected {_show(want)}")
        return value

    def history(self, data: Any, phase: str, length: int, problem: str) -> list[dict[str, Any]]:
        """``data``'s history: ``length`` entries of ``phase``'s epochs (``problem`` says so, with ``{n}`` for the
        count found)."""
        history = self.get(data, "history", "list")
        if len(history) != length:
            raise self.error("history", problem.format(n=len(history)))
        for i, entry in enumerate(history):
            prefix = f"history[{i}]."
            if self.get(entry, "phase", "str", prefix) != phase:
                raise self.error(prefix + "phase", f"{_show(entry['phase'])}, expected {_show(phase)}")
            if self.get(entry, "epoch", "int", prefix) != i + 1:
                raise self.error(prefix + "epoch", f"{entry['epoch']}, expected {i + 1}")
            for key in _HISTORY_NUMBERS:
                self.get(entry, key, "number", prefix)
        return history


def _read_verified(path: Path, digest: str, record: Path, hint: str) -> bytes:
    """``path``'s bytes, which must have the SHA-256 ``digest`` that ``record`` holds for it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GrowcError(f"'{path}' is missing ('{record}' records its SHA-256); {hint}") from None
    except OSError as error:
        raise GrowcIOError(f"cannot read '{path}': {error.strerror or error}", path=str(path)) from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise GrowcError(f"'{path}' does not match its SHA-256 in '{record}': it changed after it was written; {hint}")
    return data


def _tensors(path: Path, data: bytes, hint: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise GrowcError(f"'{path}' is not a valid safetensors file ({error}); {hint}") from None


# ------------------------------------------------------------------------------------------------ writing


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A disk problem (read-only folder, full disk, safetensors' write error) while writing ``path`` becomes a
    :class:`~growc.errors.GrowcIOError` naming it; growc's own errors pass through."""
    try:
        yield
    except GrowcError:
        raise
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise GrowcIOError(
            f"cannot write '{path}': {reason}; free some space or fix the permissions, then rerun the same command "
            "to resume",
            path=str(path),
        ) from error
    except SafetensorError as error:
        raise GrowcIOError(
            f"cannot write '{path}': {error}; free some space or fix the permissions, then rerun the same command to "
            "resume",
            path=str(path),
        ) from error


def _discard(path: Path) -> None:
    """Delete ``path`` (a folder or a file): renamed to a hidden name first, so that a kill halfway through never
    leaves a half-deleted checkpoint under a checkpoint's name."""
    if path.name.startswith(".trash-"):
        trash = path
    else:
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{next(_TRASH)}")
        os.rename(path, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


_TRASH = itertools.count()


def _write_run_json(out: Path, data: dict[str, Any]) -> None:
    """run.json, through a temporary file (``.run.json.tmp-PID``, which a new run folder may hold) and a rename."""
    run = out / "run.json"
    tmp = out / f"{_RUN_JSON_TMP}{os.getpid()}"
    with _writing(run):
        with open(tmp, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            rename_no_replace(tmp, run)  # of two runs claiming one folder at once, exactly one gets it
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise GrowcError(
                f"refusing to use '{out}' as the run folder: another growc train claimed it while this one started; "
                "pass another --out"
            ) from None
    for stale in out.glob(f"{_RUN_JSON_TMP}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _inspect_run_folder(out: Path) -> dict[str, Any] | None:
    """``out``'s run.json when it is a growc run folder; None when it is new or empty; otherwise a GrowcError."""
    refuse = f"refusing to use '{out}' as the run folder"
    if not os.path.lexists(out):
        return None
    if not out.is_dir():
        raise GrowcError(f"{refuse}: it is a file, not a folder; pass a new or empty folder (--out or output.folder)")
    try:
        entries = [e.name for e in out.iterdir()]
    except OSError as error:
        raise GrowcIOError(f"cannot read the run folder '{out}': {error.strerror or error}", path=str(out)) from None
    run = out / "run.json"
    if "run.json" in entries:
        data = _read_json(run, "delete the run folder to start over, or pass another --out")
        if data.get("format") != RUN_FORMAT or not isinstance(data.get("recipe_sha256"), str):
            raise GrowcError(
                f"{refuse}: '{run}' is not a growc run file (no "
                + f'"format": "{RUN_FORMAT}"'
                + " with a recipe_sha256); "
                "pass a new or empty folder (--out or output.folder)"
            )
        return data
    entries = [name for name in entries if not name.startswith(_RUN_JSON_TMP)]
    if not entries:
        return None
    ours = sorted(name for name in entries if _RUN_ENTRY.fullmatch(name))
    if ours:
        raise GrowcError(
            f"{refuse}: it holds growc run files ({', '.join(repr(n) for n in ours)}) but no run.json (deleted?), so "
            "nothing says which recipe they belong to; delete the folder to start over, or pass another --out"
        )
    raise GrowcError(
        f"{refuse}: it is not empty and is not a growc run folder (no run.json); pass a new or empty folder (--out "
        "or output.folder)"
    )


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


def _check_optimizer_state(loaded: Any, optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``loaded`` is not a state dict of ``optimizer`` (same groups, same hyperparameter types, per-parameter
    tensors of the parameters' shapes and dtypes), or None."""
    current = optimizer.state_dict()
    if not isinstance(loaded, dict) or set(loaded) != {"state", "param_groups"}:
        return "expected the keys 'state' and 'param_groups'"
    groups = loaded["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(current["param_groups"]):
        return f"expected {len(current['param_groups'])} parameter groups"
    number = (int, float)
    for i, (group, want) in enumerate(zip(groups, current["param_groups"], strict=True)):
        if not isinstance(group, dict) or set(group) != set(want) or group["params"] != want["params"]:
            return f"parameter group {i} is not this optimizer's"
        for key, value in want.items():
            got = group[key]
            same = type(got) is type(value) or (isinstance(got, number) and isinstance(value, number))
            if isinstance(value, (list, tuple)):  # e.g. AdamW's betas: a tuple, a list after JSON
                same = isinstance(got, (list, tuple)) and len(got) == len(value)
                same = same and all(isinstance(v, number) and not isinstance(v, bool) for v in got)
            if not same or isinstance(got, bool) != isinstance(value, bool):
                return f"parameter group {i}: '{key}' is {_show(got)}"
    params = {
        index: param
        for group, want in zip(optimizer.param_groups, current["param_groups"], strict=True)
        for index, param in zip(want["params"], group["params"], strict=True)
    }
    state = loaded["state"]
    if not isinstance(state, dict):
        return "'state' is not a mapping"
    for index, entry in state.items():
        if index not in params or not isinstance(entry, dict):
            return f"state of parameter {_show(index)} is not this optimizer's"
        param = params[index]
        for key, value in entry.items():
            if not isinstance(key, str):
                return f"parameter {index}: key {_show(key)}"
            if isinstance(value, torch.Tensor):
                if key == "step":
                    if value.numel() != 1:
                        return f"parameter {index}: 'step' has {value.numel()} values"
                elif value.shape != param.shape or value.dtype != param.dtype:
                    return f"parameter {index}: '{key}' has shape {list(value.shape)} and dtype {value.dtype}"
            elif not isinstance(value, number) or isinstance(value, bool):
                return f"parameter {index}: '{key}' is {_show(value)}"
    return None


@dataclass
class _Checkpoint:
    """A checkpoint read and verified (not yet applied to the model and optimizer)."""

    folder: Path
    epoch: int
    history: list[dict[str, Any]]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]

    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        load_into(model, self.model, f"checkpoint '{self.folder / 'model.safetensors'}'")
        try:
            optimizer.load_state_dict(self.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as error:
            path = self.folder / "optimizer.json"
            raise GrowcError(f"'{path}': not an optimizer state growc wrote for this model ({error})") from None


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
        fingerprint: str = "",
    ) -> None:
        self.data = data
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.every = every
        self.stop_after = stop_after
        self.progress = progress
        self.fingerprint = fingerprint  # the recipe's: every checkpoint and finished phase records it
        self.epochs_run = 0
        self.good: Path | None = None  # the running phase's newest good checkpoint (kept when the next is written)
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
        if folder is not None and os.path.lexists(folder / "done.json"):
            record = self._reuse_phase(folder, name, phase, model)
            if self.dist.main:  # a run killed before it deleted the checkpoints (or all of their trash)
                with contextlib.suppress(OSError):
                    for entry in list(folder.iterdir()):
                        if entry.name == "checkpoints" or entry.name.startswith(".trash-"):
                            _discard(entry)
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
        checkpoints = folder / "checkpoints" if folder is not None else None
        self.good = None
        if checkpoints is not None:
            resumed = self._resume(checkpoints, name, phase, model, optimizer)
            if resumed is not None:
                start, history = resumed.epoch, resumed.history
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
            if checkpoints is not None and self.dist.main and not last and due:
                self._save_checkpoint(checkpoints, name, epoch + 1, model, optimizer, history)
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
        if folder is not None and self.dist.main:
            self._finish_phase(folder, model, record)
        self.dist.barrier()
        return record

    # -- checkpoints and finished phases, verified
    def _checkpoint_hint(self, checkpoints: Path) -> str:
        return f"delete '{checkpoints}' to restart this phase"

    def _save_checkpoint(
        self,
        checkpoints: Path,
        name: str,
        epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        history: list[dict[str, Any]],
    ) -> None:
        """Write ``checkpoints/epoch-NNNN`` atomically, with its manifest; then keep only it and the previous good
        one."""
        dest = checkpoints / f"epoch-{epoch:04d}"
        tensors: dict[str, torch.Tensor] = {}
        structure = _flatten(optimizer.state_dict(), "", tensors)
        state = {"phase": name, "epoch": epoch, "history": history}
        with _writing(dest):
            if os.path.lexists(dest):  # a damaged one, from before the fallback to an earlier checkpoint
                _discard(dest)
            with atomic_directory(dest) as tmp:
                save_tensors(dict(model.state_dict()), tmp / "model.safetensors")
                save_tensors(tensors or {"_": torch.zeros(0)}, tmp / "optimizer.safetensors")
                (tmp / "optimizer.json").write_text(json.dumps(structure) + "\n")
                (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
                files = {n: sha256_file(tmp / n) for n in CHECKPOINT_FILES}
                manifest = {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "phase": name,
                            "epoch": epoch, "files": files}  # fmt: skip
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        keep = {dest.name} | ({self.good.name} if self.good is not None else set())
        self.good = dest
        with contextlib.suppress(OSError):  # what is left is harmless: only the newest good one is ever used
            for entry in list(checkpoints.iterdir()):  # older ones, damaged ones, leftovers of killed writers
                if entry.name not in keep:
                    _discard(entry)

    def _resume(
        self, checkpoints: Path, name: str, phase: PhaseSpec, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> _Checkpoint | None:
        """Load the newest good checkpoint into ``model`` and ``optimizer`` (saying which were damaged); None when
        there is none at all; a GrowcError when all of them are damaged or one is inconsistent."""
        if not os.path.lexists(checkpoints):
            return None
        try:
            names = [entry.name for entry in checkpoints.iterdir()]
        except OSError as error:
            raise GrowcIOError(
                f"cannot read '{checkpoints}': {error.strerror or error}", path=str(checkpoints)
            ) from None
        found = sorted(
            ((int(m.group(1)), checkpoints / n) for n in names if (m := _CHECKPOINT_NAME.fullmatch(n))), reverse=True
        )
        damaged: list[tuple[Path, str]] = []
        for epoch, folder in found:
            try:
                checkpoint = self._read_checkpoint(folder, epoch, name, phase, optimizer)
            except _Damaged as why:
                damaged.append((folder, str(why)))
                continue
            for bad, why in damaged:
                self.log(f"{name}: checkpoint '{bad}' is damaged ({why}); resuming from the previous one, '{folder}'")
            checkpoint.apply(model, optimizer)
            self.good = folder
            self.log(f"{name}: resuming after epoch {checkpoint.epoch} from {folder}")
            return checkpoint
        if damaged:
            listed = "; ".join(f"'{bad}' ({why})" for bad, why in damaged)
            raise GrowcError(
                f"{name}: no good checkpoint in '{checkpoints}': {listed}; {self._checkpoint_hint(checkpoints)}"
            )
        return None

    def _read_checkpoint(
        self, folder: Path, epoch: int, name: str, phase: PhaseSpec, optimizer: torch.optim.Optimizer
    ) -> _Checkpoint:
        """Read and verify one checkpoint folder: ``_Damaged`` when a file is missing or its bytes are not the ones
        its manifest records; a GrowcError naming the file and the key when it verifies but disagrees."""
        hint = self._checkpoint_hint(folder.parent)
        if not folder.is_dir():
            raise _Damaged("it is not a folder")
        manifest_path = folder / "manifest.json"
        try:
            manifest = parse_json(manifest_path.read_bytes())
        except FileNotFoundError:
            raise _Damaged("'manifest.json' is missing") from None
        except (OSError, ValueError) as error:
            raise _Damaged(f"'manifest.json' cannot be read: {error}") from None
        m = _Fields(manifest_path, hint)
        if not isinstance(manifest, dict):
            raise _Damaged("'manifest.json' is not a JSON object")
        m.equal(manifest, "format", "str", CHECKPOINT_FORMAT)
        m.equal(manifest, "fingerprint", "str", self.fingerprint,
                "this checkpoint belongs to another recipe (or to this one before an edit)")  # fmt: skip
        m.equal(manifest, "phase", "str", name)
        m.equal(manifest, "epoch", "int", epoch, f"{manifest.get('epoch')!r}, but the folder is {folder.name}")
        files = m.get(manifest, "files", "object")
        raw: dict[str, bytes] = {}
        for file in CHECKPOINT_FILES:
            digest = m.get(files, file, "sha256", "files.")
            try:
                raw[file] = (folder / file).read_bytes()
            except FileNotFoundError:
                raise _Damaged(f"'{file}' is missing") from None
            except OSError as error:
                raise _Damaged(f"'{file}' cannot be read: {error.strerror or error}") from None
            if hashlib.sha256(raw[file]).hexdigest() != digest:
                raise _Damaged(f"'{file}' does not match its SHA-256 in manifest.json")
        # the bytes are the ones written: from here on a problem is an inconsistency, refused
        state_path = folder / "state.json"
        try:
            state = parse_json(raw["state.json"])
        except ValueError as error:
            raise GrowcError(f"'{state_path}' is not valid JSON: {error}; {hint}") from None
        f = _Fields(state_path, hint)
        f.equal(state, "phase", "str", name)
        start = f.get(state, "epoch", "int")
        if not 0 <= start <= phase.epochs:
            raise f.error("epoch", f"{start} is outside 0..{phase.epochs} (the phase's epochs)")
        f.equal(state, "epoch", "int", epoch, f"{start}, but manifest.json says {epoch}")
        history = f.history(state, name, start, f"{{n}} entries for epoch {start}")
        model_tensors = _tensors(folder / "model.safetensors", raw["model.safetensors"], hint)
        device = self.dist.device
        optimizer_tensors = {
            k: v.to(device)
            for k, v in _tensors(folder / "optimizer.safetensors", raw["optimizer.safetensors"], hint).items()
        }
        structure_path = folder / "optimizer.json"
        try:
            parsed = parse_json(raw["optimizer.json"])
        except ValueError as error:
            raise GrowcError(f"'{structure_path}' is not valid JSON: {error}; {hint}") from None
        try:
            structure = _unflatten(parsed, optimizer_tensors)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as error:
            structure, problem = None, repr(error)
        else:
            problem = _check_optimizer_state(structure, optimizer)
        if problem is not None:
            raise GrowcError(
                f"'{structure_path}': not an optimizer state growc wrote for this model ({problem}); {hint}"
            )
        return _Checkpoint(folder, start, history, model_tensors, structure)

    def _finish_phase(self, folder: Path, model: nn.Module, record: dict[str, Any]) -> None:
        """The phase's weights and done.json (which records their SHA-256 and the fingerprint); then its checkpoints
        go."""
        weights = folder / "model.safetensors"
        with _writing(weights):
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_file(weights) as tmp:
                save_tensors(dict(model.state_dict()), tmp)
                digest = sha256_file(tmp)
        done = folder / "done.json"
        payload = {"format": PHASE_FORMAT, "fingerprint": self.fingerprint, **record,
                   "files": {"model.safetensors": digest}}  # fmt: skip
        with _writing(done):
            atomic_write_text(done, json.dumps(payload, indent=2) + "\n")
        if os.path.lexists(folder / "checkpoints"):
            with contextlib.suppress(OSError):
                _discard(folder / "checkpoints")

    def _reuse_phase(self, folder: Path, name: str, phase: PhaseSpec, model: nn.Module) -> dict[str, Any]:
        """A finished phase's record, its weights verified against done.json and loaded into ``model``."""
        done = folder / "done.json"
        hint = f"delete '{folder}' to train this phase again"
        data = _read_json(done, hint)
        f = _Fields(done, hint)
        f.equal(data, "format", "str", PHASE_FORMAT)
        f.equal(data, "fingerprint", "str", self.fingerprint,
                "this phase belongs to another recipe (or to this one before an edit)")  # fmt: skip
        f.equal(data, "phase", "str", name)
        f.equal(data, "epochs", "int", phase.epochs)
        f.history(data, name, phase.epochs, f"{{n}} entries for {phase.epochs} epochs")
        if f.get(data, "params", "int") < 0:
            raise f.error("params", f"{data['params']} is negative")
        flops = f.get(data, "flops", "object")
        for key in _FLOPS_NUMBERS:
            f.get(flops, key, "number", "flops.")
        f.get(data, "test_acc", "number")
        digest = f.get(f.get(data, "files", "object"), "model.safetensors", "sha256", "files.")
        weights = folder / "model.safetensors"
        raw = _read_verified(weights, digest, done, hint)
        load_into(model, _tensors(weights, raw, hint), f"'{weights}'")
        return {k: data[k] for k in ("phase", "epochs", "history", "params", "flops", "test_acc")}


class _Trainer(_Loop):
    """A recipe's run: its phases in order, in a run folder."""

    def __init__(self, recipe: RecipeSpec, out: Path, stop_after: int | None, progress: bool) -> None:
        self.recipe = recipe
        self.out = out
        self.spec = growth_spec(recipe)
        fingerprint = _fingerprint(recipe, self.spec)
        self._check_run_folder(fingerprint)  # before any work: loading the data, creating a folder
        self.records: dict[str, dict[str, Any]] = {}  # the finished phases' records, by name
        data = load_data(recipe.data, recipe.base_dir)
        super().__init__(
            data,
            seed=recipe.seed,
            eval_batch_size=recipe.eval_batch_size,
            every=recipe.checkpoint.every,
            stop_after=stop_after,
            progress=progress,
            fingerprint=fingerprint,
        )

    def _check_run_folder(self, fingerprint: str) -> bool:
        """Whether ``self.out`` is already this recipe's run folder (False: new or empty); anything else is refused."""
        recorded = _inspect_run_folder(self.out)
        if recorded is not None and recorded["recipe_sha256"] != fingerprint:
            raise GrowcError(
                f"refusing to use '{self.out}' as the run folder: it holds a run of a different recipe (or of this "
                "one, or its growth spec, before an edit): pass another --out, or delete the folder to start over"
            )
        return recorded is not None

    def on_epoch(self, history: list[dict[str, Any]]) -> None:
        self.write_metrics(history)

    def write_metrics(self, current: list[dict[str, Any]]) -> None:
        if not self.dist.main:
            return
        rows = [row for name in self.phase_names() if name in self.records for row in self.records[name]["history"]]
        rows += current
        with _writing(self.out / "metrics.jsonl"):
            atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        buffer = io.StringIO()
        fields = ["phase", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with _writing(self.out / "metrics.csv"):
            atomic_write_text(self.out / "metrics.csv", buffer.getvalue())

    def phase_names(self) -> list[str]:
        return [f"parent{i}" for i in range(len(self.spec.parents))] + ["grown"]

    def run(self) -> dict[str, Any]:
        from growc.compile.build import build_parent, template_options
        from growc.passes import templatize

        with _writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        self._claim_folder()
        spec, x = self.spec, example_input(self.spec)
        parents = []
        for i in range(len(spec.parents)):
            model = build_parent(spec, i)
            model = templatize(model, (x,), seed=spec.seed + i, verify=False, **template_options(spec))
            with torch.no_grad():
                classes = model.eval()(x).shape[-1]
            model.train(spec.trace.mode == "train")
            if classes != self.data.num_classes:
                raise spec.doc.error(
                    ("parents", i, "kwargs"),
                    f"parent {i} outputs {classes} classes; {self.recipe.data.name} has {self.data.num_classes}",
                )
            name = f"parent{i}"
            parents.append(self.train_phase(name, i, model, self.recipe.parents, self.out / name))
            self.records[name] = parents[-1]
        grown_spec = spec.model_copy(deep=True)
        grown_spec._doc = spec._doc
        for i, parent in enumerate(grown_spec.parents):
            parent.weights = str(self.out / f"parent{i}" / "model.safetensors")
        artifact = self.out / "grown-artifact"
        if os.path.lexists(artifact / "grow.json"):  # every rank decides before rank 0 can write it
            growth = self._reuse_growth(artifact)
            model = load(artifact, trust_code=True).to(self.dist.device)  # this run's own artifact, verified
        else:
            if self.dist.main:
                with _writing(artifact):
                    grow(grown_spec, artifact, overwrite=True)  # replaces one a killed run left without grow.json
            self.dist.barrier()
            model = load(artifact, trust_code=True).to(self.dist.device)
            loss, acc = self.evaluate(model)
            growth = {"test_loss": loss, "test_acc": acc, "params": sum(p.numel() for p in model.parameters())}
            if self.dist.main:
                self._record_growth(artifact, growth)
        index = len(spec.parents)
        grown = self.train_phase("grown", index, model, self.recipe.grown, self.out / "grown")
        self.records["grown"] = grown
        final = self.out / "final"
        saved = load_spec(artifact / "spec.yaml")
        if self.dist.main and not (final / "report.json").is_file():  # a finished run's final artifact stays
            report = {"trained": {"recipe": str(self.recipe.doc.file), "phase": grown}, "name": saved.name}
            report = _artifact_report(artifact, report)
            with _writing(final):
                write_artifact(final, saved, model.cpu(), example_input(saved), report, overwrite=True)
            model.to(self.dist.device)
        elif self.dist.main:  # a kept final artifact must hold exactly the weights the grown phase ended with
            kept = load(final, trust_code=True).state_dict()
            mine = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            if set(kept) != set(mine) or any(not torch.equal(kept[k], mine[k]) for k in mine):
                raise GrowcError(
                    f"'{final}' does not hold the weights this run's grown phase ended with ('{self.out / 'grown'}'): "
                    "it was replaced or edited; delete it and rerun to write it again"
                )
        results = self._results(parents, growth, grown, model)
        if self.dist.main:
            with _writing(self.out / "results.json"):
                atomic_write_text(self.out / "results.json", json.dumps(results, indent=2) + "\n")
            with _writing(self.out / "results.md"):
                atomic_write_text(self.out / "results.md", format_results(results) + "\n")
            self.write_metrics([])
            with _writing(self.out / "curves.png"):
                _plot(self.out, results)
        self.dist.barrier()
        return results

    def _growth_files(self, artifact: Path) -> dict[str, str]:
        return {p.name: sha256_file(p) for p in sorted(artifact.iterdir()) if p.is_file() and p.name != "grow.json"}

    def _parent_digests(self) -> list[str]:
        return [sha256_file(self.out / f"parent{i}" / "model.safetensors") for i in range(len(self.spec.parents))]

    def _record_growth(self, artifact: Path, growth: dict[str, Any]) -> None:
        """grow.json: the accuracy right after growth, the fingerprint, the parents' and every artifact file's
        SHA-256."""
        path = artifact / "grow.json"
        payload = {"format": GROWTH_FORMAT, "fingerprint": self.fingerprint, **growth,
                   "parents": self._parent_digests(), "files": self._growth_files(artifact)}  # fmt: skip
        with _writing(path):
            atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    def _reuse_growth(self, artifact: Path) -> dict[str, Any]:
        """The growth's record, after checking that grow.json is this recipe's, made from these parents, and that
        every artifact file is the one it records."""
        path = artifact / "grow.json"
        hint = f"delete '{artifact}' to grow again"
        data = _read_json(path, hint)
        f = _Fields(path, hint)
        f.equal(data, "format", "str", GROWTH_FORMAT)
        f.equal(data, "fingerprint", "str", self.fingerprint,
                "this growth belongs to another recipe (or to this one before an edit)")  # fmt: skip
        f.get(data, "test_loss", "number")
        f.get(data, "test_acc", "number")
        f.get(data, "params", "int")
        parents = f.get(data, "parents", "list")
        if parents != self._parent_digests():
            raise f.error("parents", "the growth was made from other parent weights than the run's")
        files = f.get(data, "files", "object")
        for name in files:
            digest = f.get(files, name, "sha256", "files.")
            if "/" in name or name in ("", ".", ".."):
                raise f.error(f"files.{name}", "not a file of the artifact")
            _read_verified(artifact / name, digest, path, hint)
        return {k: data[k] for k in ("test_loss", "test_acc", "params")}

    def _claim_folder(self) -> None:
        """Start a run folder, or check that it holds this recipe's run. Every rank reads before rank 0 writes (no
        rank can see a half-claimed folder), and all of them agree on the outcome."""
        self.dist.barrier()
        claimed = self._check_run_folder(self.fingerprint)
        self.dist.barrier()
        if self.dist.main:
            from growc.version import __version__

            if not claimed:  # run.json first: from then on the folder is this recipe's
                run = {"format": RUN_FORMAT, "recipe_sha256": self.fingerprint, "growc": __version__,
                       "recipe": str(self.recipe.doc.file)}  # fmt: skip
                _write_run_json(self.out, run)
            if not (self.out / "recipe.yaml").is_file():
                with _writing(self.out / "recipe.yaml"):
                    atomic_write_text(
                        self.out / "recipe.yaml",
                        yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None),
                    )
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
    report = _read_json(artifact / "report.json", f"delete '{artifact}' to grow again")
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
    try:
        folder = Path(out if out is not None else recipe.output.folder).resolve()  # once: every check applies to it
    except (OSError, RuntimeError) as error:
        raise GrowcError(f"cannot resolve the run folder '{out or recipe.output.folder}': {error}") from None
    trainer = _Trainer(recipe, folder, stop_after, progress)
    try:
        return trainer.run()
    finally:
        trainer.close()

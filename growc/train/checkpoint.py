"""A phase's checkpoints: the optimizer-state codec (no pickle) and the verified ``epoch-NNNN`` folders.

A checkpoint folder (``PHASE/checkpoints/epoch-NNNN/``) holds ``model.safetensors``, ``optimizer.safetensors`` and
``optimizer.json`` (the optimizer state: its tensors, and its structure as JSON), ``state.json`` (phase, epoch,
history) and ``manifest.json`` (the SHA-256 of each of those files, the recipe's fingerprint, the phase and the
epoch). It is written atomically; the previous good one is kept. On resume the newest one is verified first: a file
missing or whose bytes are not the ones its manifest records makes it *damaged* (:class:`Damaged`), and the previous
one is used, saying so; files that verify but disagree are refused with the file and the key.

Owns: :func:`flatten_state` / :func:`unflatten_state` (an optimizer state dict as JSON plus tensors),
:func:`check_optimizer_state`, :class:`Checkpoint` (one read and verified) and :class:`Checkpoints` (a phase's
checkpoint folder: save, resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from growc.errors import GrowcError, GrowcIOError
from growc.io import atomic_directory, load_into, parse_json, save_tensors, sha256_file
from growc.train.files import Fields, discard, read_tensors, show, writing

__all__ = [
    "CHECKPOINT_FILES",
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "Checkpoints",
    "Damaged",
    "check_optimizer_state",
    "flatten_state",
    "unflatten_state",
]

CHECKPOINT_FORMAT = "growc-checkpoint"
#: the files a checkpoint's manifest records (manifest.json is the sixth)
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "state.json")
_CHECKPOINT_NAME = re.compile(r"epoch-(\d+)")
_NUMBER = (int, float)


# ------------------------------------------------------------------------------------- optimizer state, no pickle


def flatten_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` (an optimizer state dict) as JSON: each tensor moves into ``tensors`` (as ``t0``, ``t1``, ...) and
    is referred to as ``{"__tensor__": key}``; a dict becomes ``{"__dict__": [[key, value], ...]}`` (its keys need
    not be strings)."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[flatten_state(k, tensors), flatten_state(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [flatten_state(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise GrowcError(f"cannot checkpoint optimizer state of type {type(value).__name__}")


def unflatten_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`flatten_state` (tuples come back as lists)."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [unflatten_state(v, tensors) for v in value]
    return value


def _same_kind(got: Any, value: Any) -> bool:
    """Whether a loaded hyperparameter ``got`` has the type of the optimizer's ``value``."""
    same = type(got) is type(value) or (isinstance(got, _NUMBER) and isinstance(value, _NUMBER))
    if isinstance(value, (list, tuple)):  # e.g. AdamW's betas: a tuple, a list after JSON
        same = isinstance(got, (list, tuple)) and len(got) == len(value)
        same = same and all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in got)
    return same and isinstance(got, bool) == isinstance(value, bool)


def _check_groups(groups: Any, current: list[dict[str, Any]]) -> str | None:
    if not isinstance(groups, list) or len(groups) != len(current):
        return f"expected {len(current)} parameter groups"
    for i, (group, want) in enumerate(zip(groups, current, strict=True)):
        if not isinstance(group, dict) or set(group) != set(want) or group["params"] != want["params"]:
            return f"parameter group {i} is not this optimizer's"
        for key, value in want.items():
            if not _same_kind(group[key], value):
                return f"parameter group {i}: '{key}' is {show(group[key])}"
    return None


def _check_entry(index: Any, entry: dict[Any, Any], param: torch.Tensor) -> str | None:
    """Why ``entry`` is not the state of parameter ``param`` (number ``index``), or None."""
    for key, value in entry.items():
        if not isinstance(key, str):
            return f"parameter {index}: key {show(key)}"
        if isinstance(value, torch.Tensor):
            if key == "step":
                if value.numel() != 1:
                    return f"parameter {index}: 'step' has {value.numel()} values"
            elif value.shape != param.shape or value.dtype != param.dtype:
                return f"parameter {index}: '{key}' has shape {list(value.shape)} and dtype {value.dtype}"
        elif not isinstance(value, _NUMBER) or isinstance(value, bool):
            return f"parameter {index}: '{key}' is {show(value)}"
    return None


def check_optimizer_state(loaded: Any, optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``loaded`` is not a state dict of ``optimizer`` (same groups, same hyperparameter types, per-parameter
    tensors of the parameters' shapes and dtypes), or None."""
    current = optimizer.state_dict()
    if not isinstance(loaded, dict) or set(loaded) != {"state", "param_groups"}:
        return "expected the keys 'state' and 'param_groups'"
    problem = _check_groups(loaded["param_groups"], current["param_groups"])
    if problem is not None:
        return problem
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
            return f"state of parameter {show(index)} is not this optimizer's"
        problem = _check_entry(index, entry, params[index])
        if problem is not None:
            return problem
    return None


# ------------------------------------------------------------------------------------------ checkpoint folders


class Damaged(GrowcError):
    """A checkpoint that fails its integrity check (missing file, bytes unlike the manifest's): an earlier one is
    used instead, if there is one."""


@dataclass
class Checkpoint:
    """A checkpoint read and verified (not yet applied to the model and optimizer)."""

    folder: Path
    epoch: int
    history: list[dict[str, Any]]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]

    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the checkpoint's weights into ``model`` and its state into ``optimizer``."""
        load_into(model, self.model, f"checkpoint '{self.folder / 'model.safetensors'}'")
        try:
            optimizer.load_state_dict(self.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as error:
            path = self.folder / "optimizer.json"
            raise GrowcError(f"'{path}': not an optimizer state growc wrote for this model ({error})") from None


class Checkpoints:
    """One phase's checkpoint folder (``PHASE/checkpoints``): written with :meth:`save`, resumed with
    :meth:`resume`. It remembers the newest good checkpoint (:attr:`good`), kept when the next one is written.

    ``fingerprint`` is the recipe's (every manifest records it), ``device`` where the optimizer state is loaded, and
    ``log`` says which checkpoint a resume uses and which were damaged.
    """

    def __init__(self, folder: Path, fingerprint: str, device: torch.device, log: Callable[[str], None]) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.device = device
        self.log = log
        self._good: Path | None = None

    @property
    def good(self) -> Path | None:
        """The newest good checkpoint (written or resumed from by this object), or None."""
        return self._good

    @property
    def hint(self) -> str:
        """What to do about a checkpoint that cannot be used."""
        return f"delete '{self.folder}' to restart this phase"

    def save(
        self, name: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict[str, Any]]
    ) -> None:
        """Write ``checkpoints/epoch-NNNN`` atomically, with its manifest; then keep only it and the previous good
        one."""
        dest = self.folder / f"epoch-{epoch:04d}"
        tensors: dict[str, torch.Tensor] = {}
        structure = flatten_state(optimizer.state_dict(), tensors)
        state = {"phase": name, "epoch": epoch, "history": history}
        with writing(dest):
            if os.path.lexists(dest):  # a damaged one, from before the fallback to an earlier checkpoint
                discard(dest)
            with atomic_directory(dest) as tmp:
                save_tensors(dict(model.state_dict()), tmp / "model.safetensors")
                save_tensors(tensors or {"_": torch.zeros(0)}, tmp / "optimizer.safetensors")
                (tmp / "optimizer.json").write_text(json.dumps(structure) + "\n")
                (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
                files = {n: sha256_file(tmp / n) for n in CHECKPOINT_FILES}
                manifest = {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "phase": name,
                            "epoch": epoch, "files": files}  # fmt: skip
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        keep = {dest.name} | ({self._good.name} if self._good is not None else set())
        self._good = dest
        with contextlib.suppress(OSError):  # what is left is harmless: only the newest good one is ever used
            for entry in list(self.folder.iterdir()):  # older ones, damaged ones, leftovers of killed writers
                if entry.name not in keep:
                    discard(entry)

    def _found(self) -> list[tuple[int, Path]]:
        """The checkpoint folders, newest first."""
        try:
            names = [entry.name for entry in self.folder.iterdir()]
        except OSError as error:
            raise GrowcIOError(
                f"cannot read '{self.folder}': {error.strerror or error}", path=str(self.folder)
            ) from None
        return sorted(
            ((int(m.group(1)), self.folder / n) for n in names if (m := _CHECKPOINT_NAME.fullmatch(n))), reverse=True
        )

    def resume(self, name: str, epochs: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> Checkpoint | None:
        """Load the newest good checkpoint of phase ``name`` (of ``epochs`` epochs) into ``model`` and ``optimizer``
        (saying which were damaged); None when there is none at all; a GrowcError when all of them are damaged or
        one is inconsistent."""
        self._good = None
        if not os.path.lexists(self.folder):
            return None
        damaged: list[tuple[Path, str]] = []
        for epoch, folder in self._found():
            try:
                checkpoint = self.read(folder, epoch, name, epochs, optimizer)
            except Damaged as why:
                damaged.append((folder, str(why)))
                continue
            for bad, why in damaged:
                self.log(f"{name}: checkpoint '{bad}' is damaged ({why}); resuming from the previous one, '{folder}'")
            checkpoint.apply(model, optimizer)
            self._good = folder
            self.log(f"{name}: resuming after epoch {checkpoint.epoch} from {folder}")
            return checkpoint
        if damaged:
            listed = "; ".join(f"'{bad}' ({why})" for bad, why in damaged)
            raise GrowcError(f"{name}: no good checkpoint in '{self.folder}': {listed}; {self.hint}")
        return None

    def read(self, folder: Path, epoch: int, name: str, epochs: int, optimizer: torch.optim.Optimizer) -> Checkpoint:
        """Read and verify one checkpoint folder: :class:`Damaged` when a file is missing or its bytes are not the
        ones its manifest records; a GrowcError naming the file and the key when it verifies but disagrees."""
        raw = self._verified_files(folder, epoch, name)
        # the bytes are the ones written: from here on a problem is an inconsistency, refused
        start, history = self._read_state(folder, raw["state.json"], epoch, name, epochs)
        model_tensors = read_tensors(folder / "model.safetensors", raw["model.safetensors"], self.hint)
        structure = self._read_optimizer(folder, raw, optimizer)
        return Checkpoint(folder, start, history, model_tensors, structure)

    def _verified_files(self, folder: Path, epoch: int, name: str) -> dict[str, bytes]:
        """The bytes of the checkpoint's files, each verified against the manifest (which must be this phase's and
        this epoch's)."""
        if not folder.is_dir():
            raise Damaged("it is not a folder")
        manifest_path = folder / "manifest.json"
        try:
            manifest = parse_json(manifest_path.read_bytes())
        except FileNotFoundError:
            raise Damaged("'manifest.json' is missing") from None
        except (OSError, ValueError) as error:
            raise Damaged(f"'manifest.json' cannot be read: {error}") from None
        m = Fields(manifest_path, self.hint)
        if not isinstance(manifest, dict):
            raise Damaged("'manifest.json' is not a JSON object")
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
                raise Damaged(f"'{file}' is missing") from None
            except OSError as error:
                raise Damaged(f"'{file}' cannot be read: {error.strerror or error}") from None
            if hashlib.sha256(raw[file]).hexdigest() != digest:
                raise Damaged(f"'{file}' does not match its SHA-256 in manifest.json")
        return raw

    def _read_state(
        self, folder: Path, raw: bytes, epoch: int, name: str, epochs: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """state.json's epoch and history."""
        state_path = folder / "state.json"
        try:
            state = parse_json(raw)
        except ValueError as error:
            raise GrowcError(f"'{state_path}' is not valid JSON: {error}; {self.hint}") from None
        f = Fields(state_path, self.hint)
        f.equal(state, "phase", "str", name)
        start = f.get(state, "epoch", "int")
        if not 0 <= start <= epochs:
            raise f.error("epoch", f"{start} is outside 0..{epochs} (the phase's epochs)")
        f.equal(state, "epoch", "int", epoch, f"{start}, but manifest.json says {epoch}")
        return start, f.history(state, name, start, f"{{n}} entries for epoch {start}")

    def _read_optimizer(self, folder: Path, raw: dict[str, bytes], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state of optimizer.json and optimizer.safetensors, checked against ``optimizer``."""
        optimizer_tensors = {
            k: v.to(self.device)
            for k, v in read_tensors(folder / "optimizer.safetensors", raw["optimizer.safetensors"], self.hint).items()
        }
        structure_path = folder / "optimizer.json"
        try:
            parsed = parse_json(raw["optimizer.json"])
        except ValueError as error:
            raise GrowcError(f"'{structure_path}' is not valid JSON: {error}; {self.hint}") from None
        try:
            structure = unflatten_state(parsed, optimizer_tensors)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as error:
            structure, problem = None, repr(error)
        else:
            problem = check_optimizer_state(structure, optimizer)
        if problem is not None:
            raise GrowcError(
                f"'{structure_path}': not an optimizer state growc wrote for this model ({problem}); {self.hint}"
            )
        return structure

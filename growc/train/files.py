"""Reading and writing the files of a run folder safely: the base every other train module writes through.

Owns: JSON objects growc wrote, read with typed fields whose every problem is a located
:class:`~growc.errors.GrowcError` naming the file and the key (:class:`Fields`); bytes verified against the SHA-256
a record holds (:func:`read_verified`); safetensors bytes (:func:`read_tensors`); disk problems while writing as a
:class:`~growc.errors.GrowcIOError` naming the path (:func:`writing`); deletion that never leaves a half-deleted
folder under a name growc reads (:func:`discard`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from growc.errors import GrowcError, GrowcIOError
from growc.io import parse_json

__all__ = ["HISTORY_NUMBERS", "Fields", "discard", "read_json", "read_tensors", "read_verified", "show", "writing"]

#: the numbers every history entry (one epoch of one phase) holds
HISTORY_NUMBERS = ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = {"int": "an integer", "number": "a number", "str": "a string", "list": "a list", "object": "an object",
          "sha256": "a SHA-256 (64 hex digits)"}  # fmt: skip


def show(value: Any) -> str:
    """``value``'s repr, cut to 60 characters (for messages about a value found in a file)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_json(path: Path, hint: str) -> dict[str, Any]:
    """A JSON object growc wrote; anything else is a GrowcError naming ``path`` that ends with ``hint``."""
    try:
        data = parse_json(path.read_bytes())
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise GrowcError(f"'{path}' is damaged ({reason}): {hint}") from None
    if not isinstance(data, dict):
        raise GrowcError(f"'{path}' is damaged (not a JSON object): {hint}")
    return data


def _is(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "sha256":
        return isinstance(value, str) and _SHA256.fullmatch(value) is not None
    return isinstance(value, {"str": str, "list": list, "object": dict}[kind])


@dataclass
class Fields:
    """Typed reads of one JSON file growc wrote: every problem is a GrowcError naming the file and the key."""

    path: Path
    hint: str

    def error(self, key: str, problem: str) -> GrowcError:
        """The error for ``key`` of this file: ``'PATH', key 'KEY': PROBLEM; HINT``."""
        return GrowcError(f"'{self.path}', key '{key}': {problem}; {self.hint}")

    def get(self, data: Any, key: str, kind: str, prefix: str = "") -> Any:
        """``data[key]``, which must be of ``kind`` (int, number, str, list, object, sha256); ``prefix`` locates
        ``data`` in the file (``"files."``)."""
        name = prefix + key
        if not isinstance(data, dict) or key not in data:
            raise self.error(name, "missing")
        value = data[key]
        if not _is(value, kind):
            raise self.error(name, f"expected {_KINDS[kind]}, got {show(value)}")
        return value

    def equal(self, data: Any, key: str, kind: str, want: Any, problem: str | None = None) -> Any:
        """``data[key]``, which must equal ``want`` (``problem`` says what it means when it does not)."""
        value = self.get(data, key, kind)
        if value != want:
            raise self.error(key, problem or f"{show(value)}, expected {show(want)}")
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
                raise self.error(prefix + "phase", f"{show(entry['phase'])}, expected {show(phase)}")
            if self.get(entry, "epoch", "int", prefix) != i + 1:
                raise self.error(prefix + "epoch", f"{entry['epoch']}, expected {i + 1}")
            for key in HISTORY_NUMBERS:
                self.get(entry, key, "number", prefix)
        return history


def read_verified(path: Path, digest: str, record: Path, hint: str) -> bytes:
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


def read_tensors(path: Path, data: bytes, hint: str) -> dict[str, torch.Tensor]:
    """The tensors of ``data``, the bytes of the safetensors file ``path``."""
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise GrowcError(f"'{path}' is not a valid safetensors file ({error}); {hint}") from None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
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


_TRASH = itertools.count()  # this process's trash names: unique, so two discards never collide


def discard(path: Path) -> None:
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

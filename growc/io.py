"""Writing artifacts atomically and weights without pickle.

:func:`atomic_directory` builds a folder under a temporary name beside its destination and renames it into place
only when everything inside was written; an exception (or a kill) leaves no partial folder at the destination.
Weights are stored with safetensors (no pickle on load).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import GrowcError

__all__ = [
    "atomic_directory",
    "atomic_file",
    "atomic_write_text",
    "load_into",
    "load_state_dict",
    "save_state_dict",
    "save_tensors",
    "sha256_file",
    "write_json",
]


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``destination`` in one rename.

    Raises ``FileExistsError`` when ``destination`` exists and ``overwrite`` is False. With ``overwrite``, the old
    folder is moved aside first and deleted only after the new one is in place.
    """
    dest = Path(destination).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"output folder '{dest}' already exists (pass --overwrite to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the artifact gets the usual permissions
        _sync_tree(tmp)  # the bytes are on disk before the rename makes them visible
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        _sync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _sync_dir(Path(folder))


def _remove_stale(dest: Path) -> None:
    """Clean up after a writer that was killed (SIGKILL: no cleanup possible) beside ``dest``: delete its temporary
    folder; and if it died while replacing ``dest``, put the previous ``dest`` back (or drop it once the new one is
    in place)."""
    for kind in ("tmp", "old"):
        for entry in dest.parent.glob(f".{glob.escape(dest.name)}.{kind}-*-*"):
            pid = entry.name[len(dest.name) + len(kind) + 3 :].partition("-")[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            previous = entry / dest.name
            if kind == "old" and previous.exists() and not dest.exists():
                os.replace(previous, dest)
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_state_dict(module: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Save ``module``'s state dict as safetensors; tensors that share storage are saved as separate copies."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        tensors[name] = tensor.to("cpu").clone().contiguous() if storage in seen else tensor.to("cpu").contiguous()
        seen.add(storage)
    save_tensors(tensors, path, metadata=metadata)


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save named tensors as safetensors (moved to CPU, made contiguous)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.fspath(path), metadata=metadata)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no unpickling); an unreadable or corrupt file is a ``GrowcError`` naming it."""
    try:
        return load_file(os.fspath(path))
    except FileNotFoundError:
        raise GrowcError(f"weights file '{path}' does not exist") from None
    except (OSError, SafetensorError, ValueError) as error:
        raise GrowcError(f"weights file '{path}' is not a valid safetensors file: {error}") from None


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``module``'s state dict, refusing any mismatch with a message naming each key.

    Every key of the module must be present with the same shape and dtype, and no other key may be: a missing key,
    an extra key, a wrong shape or a wrong dtype raises ``GrowcError`` and leaves ``module`` unchanged.
    """
    state = module.state_dict()
    problems = []
    missing = [k for k in state if k not in tensors]
    extra = [k for k in tensors if k not in state]
    if missing:
        problems.append(f"missing key(s) {_names(missing)}")
    if extra:
        problems.append(f"unexpected key(s) {_names(extra)}")
    for key, want in state.items():
        got = tensors.get(key)
        if got is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"'{key}' has shape {list(got.shape)}, the model expects {list(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"'{key}' has dtype {got.dtype}, the model expects {want.dtype}")
    if problems:
        raise GrowcError(f"{source} does not match the model: " + "; ".join(problems))
    module.load_state_dict(tensors, strict=True)


def _names(keys: list[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, for writers that look at it); when the block ends
    without an error it replaces ``path`` in one rename, otherwise it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes it 0600; the file gets the usual permissions
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and one rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return str(value) if not isinstance(value, torch.Size) else list(value)
    return repr(value)

"""Writing artifacts atomically and weights without pickle.

:func:`atomic_directory` builds a folder under a temporary name beside its destination and renames it into place
only when everything inside was written; an exception (or a kill) leaves no partial folder at the destination.
Weights are stored with safetensors (no pickle on load).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import GrowcError, GrowcExistsError, GrowcIOError

__all__ = [
    "artifact_format",
    "atomic_directory",
    "atomic_file",
    "atomic_write_text",
    "check_destination",
    "io_error",
    "load_into",
    "load_state_dict",
    "parse_json",
    "read_json",
    "rename_no_replace",
    "save_state_dict",
    "save_tensors",
    "sha256_file",
    "write_json",
]


@contextlib.contextmanager
def atomic_directory(
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "a folder growc wrote",
) -> Iterator[Path]:
    """Yield a temporary folder; on success it is published at ``destination`` in one rename.

    ``destination`` is resolved once (``..`` and symbolic links) and every check applies to the resolved path.
    Without ``overwrite`` an existing destination raises :class:`~growc.errors.GrowcExistsError`, before the work
    and again at the publish, which never replaces anything (``renameat2(RENAME_NOREPLACE)``; elsewhere a rename
    that fails on a non-empty folder): of two writers racing for one destination exactly one wins.

    With ``overwrite`` only a folder growc wrote is replaced: ``replaceable(folder)`` must say so (by default: every
    entry of the old folder is a plain file the new one also writes). A plain file, a link or anything else is never
    replaced. The old folder is moved aside first, checked there (what is checked is what is replaced), and deleted
    only after the new one is in place; a refused one is put back untouched.

    Any ``OSError`` while writing or publishing becomes a :class:`~growc.errors.GrowcIOError` naming the path.
    """
    dest = resolve_output(destination)
    check = replaceable or _same_files
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(dest)
    except OSError as error:
        raise io_error(error, dest.parent, "cannot create the output folder in") from None
    _check_destination(dest, overwrite, check, what, None)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{_writer_tag()}-", dir=dest.parent))
    except OSError as error:
        raise io_error(error, dest.parent, "cannot create the output folder in") from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the artifact gets the usual permissions
        _sync_tree(tmp)  # the bytes are on disk before the rename makes them visible
        _publish(tmp, dest, overwrite, check, what)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, GrowcError):
            raise
        raise io_error(error, dest, "writing") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def io_error(error: OSError, path: str | os.PathLike[str], doing: str) -> GrowcIOError:
    """A :class:`~growc.errors.GrowcIOError` for ``error`` that names ``path`` and what was being done."""
    reason = error.strerror or str(error) or type(error).__name__
    hint = {
        errno.ENOSPC: ": free some space and rerun",
        errno.EDQUOT: ": free some space and rerun",
        errno.EACCES: ": check the folder's permissions",
        errno.EPERM: ": check the folder's permissions",
        errno.EROFS: ": the file system is read-only; choose another output",
    }.get(error.errno or -1, "")
    return GrowcIOError(f"{doing} '{path}' failed: {reason}{hint}", path=os.fspath(path))


def resolve_output(path: str | os.PathLike[str]) -> Path:
    """The absolute path an output at ``path`` is written to: its folder resolved (``..`` and links), its last
    component kept, so a link there (even a dangling one) is an existing entry, never followed."""
    raw = Path(path)
    if raw.name in ("", ".", ".."):
        return raw.resolve()
    return raw.parent.resolve() / raw.name


def check_destination(
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "a folder growc wrote",
) -> Path:
    """Resolve ``destination`` and check that :func:`atomic_directory` may publish there (the same rules); return
    the resolved path. For a quick refusal before long work: the publish checks again."""
    dest = resolve_output(destination)
    _check_destination(dest, overwrite, replaceable or _same_files, what, None)
    return dest


def _check_destination(
    dest: Path, overwrite: bool, replaceable: Callable[[Path], bool], what: str, new_names: set[str] | None
) -> None:
    if not os.path.lexists(dest):
        return
    if not overwrite:
        raise GrowcExistsError(
            f"output folder '{dest}' already exists (pass --overwrite to replace it)", path=os.fspath(dest)
        )
    if dest.is_symlink() or not dest.is_dir():
        raise GrowcExistsError(
            f"refusing to replace '{dest}': it is not a folder, and growc replaces only {what}; choose another "
            "output folder",
            path=os.fspath(dest),
        )
    if not _is_replaceable(dest, replaceable, new_names):
        raise _refused(dest, what)


def _refused(dest: Path, what: str) -> GrowcExistsError:
    return GrowcExistsError(
        f"refusing to replace '{dest}': it is not {what}; choose another output folder", path=os.fspath(dest)
    )


def _is_replaceable(folder: Path, replaceable: Callable[[Path], bool], new_names: set[str] | None) -> bool:
    try:
        if not any(folder.iterdir()):
            return True  # an empty folder holds nothing to lose
        return _same_files(folder, new_names) and (replaceable is _same_files or replaceable(folder))
    except OSError:
        return False


def _same_files(folder: Path, names: set[str] | None = None) -> bool:
    """Whether every entry of ``folder`` is a plain file (no link, no folder) named in ``names``."""
    for entry in folder.iterdir():
        if entry.is_symlink() or not entry.is_file() or (names is not None and entry.name not in names):
            return False
    return True


def _publish(tmp: Path, dest: Path, overwrite: bool, replaceable: Callable[[Path], bool], what: str) -> None:
    if not overwrite and os.path.lexists(dest):
        raise _raced(dest)
    new_names = {p.name for p in tmp.iterdir()}
    _check_destination(dest, overwrite, replaceable, what, new_names)
    old = aside = None
    try:
        if overwrite and os.path.lexists(dest):
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{_writer_tag()}-", dir=dest.parent))
            aside = old / dest.name
            os.rename(dest, aside)
            if aside.is_symlink() or not aside.is_dir() or not _is_replaceable(aside, replaceable, new_names):
                raise _refused(dest, what)
        try:
            rename_no_replace(tmp, dest)
        except FileExistsError:
            raise _raced(dest) from None
    except BaseException:
        if aside is not None and os.path.lexists(aside) and not os.path.lexists(dest):
            os.rename(aside, dest)  # whatever went wrong, the old folder is back where it was, untouched
        if old is not None and os.path.lexists(old) and not os.path.lexists(old / dest.name):
            old.rmdir()
        raise
    _sync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _raced(dest: Path) -> GrowcExistsError:
    return GrowcExistsError(
        f"output folder '{dest}' was created by another writer while this one worked; nothing was replaced",
        path=os.fspath(dest),
    )


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2() if sys.platform.startswith("linux") else None


def rename_no_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename ``source`` to ``target``, never replacing an existing ``target`` (``FileExistsError`` then).

    Linux's ``renameat2(RENAME_NOREPLACE)`` makes this one atomic step. Where it is missing (or the file system does
    not support the flag), a folder is renamed with ``os.rename``, which fails on an existing non-empty folder and
    replaces at most an empty one, after a check that ``target`` does not exist.
    """
    if _RENAMEAT2 is not None:
        result = _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), os.fspath(target))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), os.fspath(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target))
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target)) from None
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


def _writer_tag() -> str:
    """``PID-HOST`` (HOST: 8 hex digits of this machine's name) in the names of a writer's temporaries: debris is
    recognized only when this host wrote it and its process is gone (another host's process cannot be checked)."""
    return f"{os.getpid()}-{_HOST}"


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part


def _dead_writer(match: re.Match[str] | None) -> bool:
    return match is not None and match["host"] == _HOST and not _alive(int(match["pid"]))


def _remove_stale(dest: Path) -> None:
    """Clean up after a writer that was killed (SIGKILL: no cleanup possible) beside ``dest``: delete its temporary
    folder; and if it died while replacing ``dest``, put the previous ``dest`` back (or drop it once the new one is
    in place). Only names growc makes, from this host, of a process that is gone, are touched."""
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})-{_RANDOM}")
    for entry in dest.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not _dead_writer(match) or entry.is_symlink() or not entry.is_dir():
            continue
        assert match is not None
        previous = entry / dest.name
        if match["kind"] == "old" and previous.is_dir() and not os.path.lexists(dest):
            os.rename(previous, dest)
        shutil.rmtree(entry, ignore_errors=True)


def _remove_stale_files(target: Path) -> None:
    """Delete the temporary files of killed :func:`atomic_file` writers of ``target`` (same rules as folders)."""
    pattern = re.compile(
        rf"\.{re.escape(target.stem)}\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})-{_RANDOM}{re.escape(target.suffix)}"
    )
    for entry in target.parent.iterdir():
        if _dead_writer(pattern.fullmatch(entry.name)) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)


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
    """Save named tensors as safetensors (moved to CPU, made contiguous); a disk problem is a
    :class:`~growc.errors.GrowcIOError` naming ``path``."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        save_file(data, os.fspath(path), metadata=metadata)
    except OSError as error:
        raise io_error(error, path, "writing") from None
    except SafetensorError as error:
        raise GrowcIOError(f"writing '{path}' failed: {error}", path=os.fspath(path)) from None


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no unpickling); an unreadable or corrupt file is a ``GrowcError`` naming it."""
    try:
        return load_file(os.fspath(path))
    except FileNotFoundError:
        raise GrowcIOError(f"weights file '{path}' does not exist", path=os.fspath(path)) from None
    except IsADirectoryError:
        raise GrowcIOError(f"weights file '{path}' is a folder, not a safetensors file", path=os.fspath(path)) from None
    except PermissionError as error:
        raise io_error(error, path, "reading weights file") from None
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
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise io_error(error, path, "reading") from None
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, for writers that look at it); when the block ends
    without an error it is renamed to ``path``, otherwise it is removed.

    With ``overwrite=False`` an existing ``path`` (checked before the block and again at the rename, which then
    never replaces) raises :class:`~growc.errors.GrowcExistsError`. A folder at ``path`` is never replaced. Any
    ``OSError`` becomes a :class:`~growc.errors.GrowcIOError` naming ``path``.
    """
    target = resolve_output(path)
    _check_file_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_files(target)
        fd, name = tempfile.mkstemp(
            prefix=f".{target.stem}.tmp-{_writer_tag()}-", suffix=target.suffix, dir=target.parent
        )
        os.close(fd)
    except OSError as error:
        raise io_error(error, target, "writing") from None
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes it 0600; the file gets the usual permissions
        _check_file_target(target, overwrite)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                rename_no_replace(tmp, target)
            except FileExistsError:
                raise GrowcExistsError(
                    f"'{target}' was created by another writer while this one worked; nothing was replaced",
                    path=os.fspath(target),
                ) from None
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, GrowcError):
            raise
        raise io_error(error, target, "writing") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_file_target(target: Path, overwrite: bool) -> None:
    if target.is_symlink():
        raise GrowcExistsError(f"'{target}' is a symbolic link; growc never writes through one", path=os.fspath(target))
    if target.is_dir():
        raise GrowcExistsError(f"'{target}' is a folder; give a file name", path=os.fspath(target))
    if not overwrite and os.path.lexists(target):
        raise GrowcExistsError(f"'{target}' already exists (pass --overwrite to replace it)", path=os.fspath(target))


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and one rename (see
    :func:`atomic_file`)."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


MAX_JSON_BYTES = 64 << 20


def parse_json(raw: bytes) -> Any:
    """Parse UTF-8 JSON bytes; anything that is not (a nesting too deep for Python included) is a ``ValueError``
    saying why."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: str | os.PathLike[str], what: str = "file") -> dict[str, Any]:
    """Read a JSON object growc wrote; anything else (missing, unreadable, over 64 MiB, not JSON, nested too
    deeply, not an object) is a :class:`~growc.errors.GrowcError` naming ``path`` and ``what`` it should be."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise GrowcIOError(f"{what} '{path}' does not exist", path=os.fspath(path)) from None
    except OSError as error:
        raise io_error(error, path, f"reading {what}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise GrowcError(f"{what} '{path}' is larger than {MAX_JSON_BYTES >> 20} MiB: not a file growc wrote")
    try:
        data = parse_json(raw)
    except ValueError as error:
        raise GrowcError(f"{what} '{path}' is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise GrowcError(f"{what} '{path}' is not a JSON object")
    return data


def artifact_format(folder: str | os.PathLike[str]) -> str | None:
    """The ``format`` a growc-written ``report.json`` in ``folder`` declares (``"growc-artifact"``,
    ``"growc-templatize"``), or None when there is no such report."""
    try:
        value = read_json(Path(folder) / "report.json").get("format")
    except GrowcError:
        return None
    return value if isinstance(value, str) else None


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON (tensor dtypes, devices and sizes as text); a disk problem is a
    :class:`~growc.errors.GrowcIOError` naming ``path``."""
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    try:
        Path(path).write_text(text)
    except OSError as error:
        raise io_error(error, path, "writing") from None


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return str(value) if not isinstance(value, torch.Size) else list(value)
    return repr(value)

"""The exceptions growc raises. Every one says where the problem is and what to do about it."""

from __future__ import annotations


class GrowcError(Exception):
    """Base class of every error growc raises on purpose."""


class GrowcTraceError(GrowcError):
    """A model (or one of its submodules) cannot be traced with torch.fx and no fallback applies.

    Attributes:
        module_path: dotted path of the module whose ``forward`` failed (``""`` for the root module).
        construct: the Python construct that fx could not trace, in words.
    """

    def __init__(self, message: str, *, module_path: str = "", construct: str = "") -> None:
        super().__init__(message)
        self.module_path = module_path
        self.construct = construct


class GrowcPassError(GrowcError):
    """A graph pass failed, or left a graph that does not lint. The message names the pass and its predecessors."""


class GrowcConfigError(GrowcError, ValueError):
    """A pass or CLI was given an option value it does not accept."""


class GrowcIOError(GrowcError, OSError):
    """Reading or writing a file failed (missing, unreadable, read-only, disk full, not what growc wrote).

    Attributes:
        path: the file or folder concerned.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class GrowcExistsError(GrowcIOError, FileExistsError):
    """The output exists and growc may not replace it (no ``--overwrite``, or it is not something growc wrote)."""


class GrowcDataError(GrowcError, ValueError):
    """A tensor holds values growc cannot work with (NaN or infinity), or a size beyond growc's bounds."""

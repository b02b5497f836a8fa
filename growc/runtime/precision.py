"""The precision weights are generated in: at least fp32, outside any autocast region (owned here so banks, layers
and the batched generation all mix in one way)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["compute_dtype", "full_precision"]


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Leave any autocast region of ``device`` (there is none to leave for meta tensors)."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype weights are mixed in: at least fp32."""
    return torch.promote_types(dtype, torch.float32)

"""The ``data:`` section of a recipe: which data set, its options and the bound on generated data.

The schema only; :mod:`growc.models.datasets` loads what it describes.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from growc.spec.document import SpecModel

__all__ = ["MAX_DATA_BYTES", "DataSpec", "format_size", "synthetic_bytes", "synthetic_size_problem"]

#: The most bytes of examples (float32) the ``synthetic`` generator makes; generating needs about three times this
#: at its peak (the noise, the class centers per example, their sum and the split copies).
MAX_DATA_BYTES = 4 << 30


class DataSpec(SpecModel):
    """The data set of a recipe."""

    name: Literal["mnist1d", "digits", "cifar10", "cifar100", "imagefolder", "synthetic"] = Field(
        description="which data set"
    )
    root: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="cifar10/cifar100/imagefolder: the folder holding the data (relative to the recipe)"
    )
    download: bool = Field(default=False, description="cifar10/cifar100: download into root when it is missing")
    samples: Annotated[int, Field(ge=20, le=10_000_000)] = Field(
        default=4000, description="mnist1d/synthetic: how many examples to generate (train + test)"
    )
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.2, description="mnist1d/digits/synthetic: the held-out share"
    )
    shape: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 40], description="synthetic: the shape of one example"
    )
    classes: Annotated[int, Field(ge=2, le=100_000)] = Field(default=10, description="synthetic: the number of classes")
    image_size: Annotated[int, Field(ge=8, le=4096)] = Field(
        default=224, description="imagefolder: images are resized to this"
    )
    augment: bool | None = Field(
        default=None, description="random crop (padding 4) and horizontal flip of training images; default: CIFAR only"
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(
        default=0, description="the generator's seed (mnist1d/synthetic) and the digits split"
    )


def synthetic_bytes(spec: DataSpec) -> int:
    """The bytes of the examples and class centers ``spec``'s synthetic data set holds (4 bytes a value)."""
    return 4 * math.prod(spec.shape) * (spec.samples + spec.classes)


def format_size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def synthetic_size_problem(spec: DataSpec) -> str | None:
    """Why ``spec``'s synthetic data set is too large to generate (beyond :data:`MAX_DATA_BYTES`), or None."""
    n = synthetic_bytes(spec)
    if n <= MAX_DATA_BYTES:
        return None
    return (
        f"synthetic data of {spec.samples} examples of shape {list(spec.shape)} needs {format_size(n)} "
        "(4 bytes a value); "
        f"growc generates at most {format_size(MAX_DATA_BYTES)}: lower data.samples or data.shape"
    )

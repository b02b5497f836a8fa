"""Data sets for training recipes, all local: nothing is downloaded unless a recipe says ``download: true``.

* ``mnist1d``: MNIST-1D generated on the spot with the ``mnist1d`` package's generator (``samples`` signals of
  length 40, 10 classes, split by its ``train_split``).
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), as ``[1, 8, 8]`` images.
* ``cifar10`` / ``cifar100``: the standard folders (``cifar-10-batches-py``/``cifar-100-python`` read with an
  unpickler that only accepts numpy arrays, or the binary ``cifar-10-batches-bin``/``cifar-100-binary``) under
  ``root``; training batches get the reference's augmentation (random crop with padding 4, horizontal flip).
* ``imagefolder``: ``root/train/CLASS/*.jpg`` and ``root/val/CLASS/*.jpg`` (torchvision's ImageFolder), resized.
* ``synthetic``: Gaussian class clusters of any ``shape`` (smoke tests), at most :data:`MAX_DATA_BYTES` of them
  (checked before anything is allocated).

:func:`load_data` checks everything before any training starts: a missing or corrupt folder is a
:class:`~growc.errors.GrowcError` naming the file and what was expected; data beyond the size bound, or that cannot
be allocated, is one too.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from growc.errors import GrowcDataError, GrowcError
from growc.spec.data import DataSpec, format_size, synthetic_bytes, synthetic_size_problem

__all__ = ["Dataset", "crop_and_flip", "load_data"]

CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}


@dataclass
class Dataset:
    """Train and test tensors in memory (or a torchvision data set for image folders), ready for batching."""

    name: str
    x: Tensor | None
    y: Tensor
    x_test: Tensor | None
    y_test: Tensor
    num_classes: int
    sample_shape: tuple[int, ...]
    augment: bool = False
    folder: Any = None  # (train, test) torchvision data sets for imagefolder
    black: Tensor | None = None  # the normalized value of a black pixel, per channel (augmentation's padding)

    @property
    def train_size(self) -> int:
        return len(self.y)

    def train_batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The training examples at ``indices``, augmented with ``generator`` when the data set asks for it."""
        if self.folder is not None:
            x = torch.stack([self.folder[0][int(i)][0] for i in indices])
            y = self.y[indices]
        else:
            assert self.x is not None
            x, y = self.x[indices], self.y[indices]
        if self.augment:
            x = crop_and_flip(x, generator, fill=self.black)
        return x, y

    def test_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        """The test set in order, every ``world``-th batch from ``rank``'s."""
        n = len(self.y_test)
        for b, start in enumerate(range(0, n, batch_size)):
            if b % world != rank:
                continue
            stop = min(start + batch_size, n)
            if self.folder is not None:
                x = torch.stack([self.folder[1][i][0] for i in range(start, stop)])
            else:
                assert self.x_test is not None
                x = self.x_test[start:stop]
            yield x, self.y_test[start:stop]


def crop_and_flip(x: Tensor, generator: torch.Generator, padding: int = 4, fill: Tensor | None = None) -> Tensor:
    """Random crop with padding and random horizontal flip, per image, vectorized (the reference's CIFAR
    augmentation). ``fill`` is the per-channel padding value (default 0): for normalized images, the normalized
    value of black, so the padding is what zero padding of the raw image would be."""
    n, c, h, w = x.shape
    padded = x.new_zeros(n, c, h + 2 * padding, w + 2 * padding)
    if fill is not None:
        padded += fill.view(1, c, 1, 1).to(x)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * padding)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def _split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = len(y) - max(1, round(len(y) * fraction))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def _mnist1d(spec: DataSpec) -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise GrowcError("the mnist1d data set needs the mnist1d package: pip install mnist1d") from error
    args = get_dataset_args()
    args.num_samples = spec.samples
    args.train_split = 1 - spec.test_fraction
    args.seed = spec.seed
    try:
        data = make_dataset(args)  # generated locally from its templates; no download
        x = torch.as_tensor(data["x"], dtype=torch.float32).unsqueeze(1)
        x_test = torch.as_tensor(data["x_test"], dtype=torch.float32).unsqueeze(1)
        y, y_test = torch.as_tensor(data["y"]).long(), torch.as_tensor(data["y_test"]).long()
    except (RuntimeError, MemoryError) as error:  # the allocator's refusal
        reason = str(error) or type(error).__name__
        raise GrowcError(f"cannot generate {spec.samples} mnist1d examples: {reason}") from None
    return Dataset("mnist1d", x, y, x_test, y_test, 10, (1, 40))


def _digits(spec: DataSpec) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise GrowcError("the digits data set needs scikit-learn: pip install scikit-learn") from error
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x = (x - 0.3) / 0.4  # roughly zero mean, unit variance
    y = torch.as_tensor(bunch.target).long()
    x, y, x_test, y_test = _split(x, y, spec.test_fraction, spec.seed)
    return Dataset("digits", x, y, x_test, y_test, 10, (1, 8, 8))


def _synthetic(spec: DataSpec) -> Dataset:
    problem = synthetic_size_problem(spec)
    if problem is not None:
        raise GrowcDataError(problem)
    generator = torch.Generator().manual_seed(spec.seed)
    shape = tuple(spec.shape)
    try:
        centers = torch.randn(spec.classes, *shape, generator=generator)
        y = torch.randint(0, spec.classes, (spec.samples,), generator=generator)
        x = centers[y] + 0.8 * torch.randn(spec.samples, *shape, generator=generator)
        x, y, x_test, y_test = _split(x, y, spec.test_fraction, spec.seed)
    except (RuntimeError, MemoryError) as error:  # the allocator's refusal
        reason = str(error) or type(error).__name__
        raise GrowcError(
            f"cannot generate the synthetic data ({format_size(synthetic_bytes(spec))}): {reason}"
        ) from None
    return Dataset("synthetic", x, y, x_test, y_test, spec.classes, shape)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches: dicts, lists, strings, bytes, numbers and numpy arrays, nothing else."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only numpy arrays")
        return super().find_class(module, name)


def _read_python_batch(path: Path, label_key: str) -> tuple[Tensor, Tensor]:
    try:
        data = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        x = torch.as_tensor(data[b"data"]).view(-1, 3, 32, 32)
        y = torch.as_tensor(list(data[label_key])).long()
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError, RuntimeError, TypeError) as error:
        raise GrowcError(f"'{path}' is not a CIFAR batch in the standard python format: {error}") from None
    if len(x) != len(y):
        raise GrowcError(f"'{path}' holds {len(x)} images but {len(y)} labels")
    return x, y


def _read_binary_batch(path: Path, label_bytes: int, label_index: int) -> tuple[Tensor, Tensor]:
    try:
        raw = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    except OSError as error:
        raise GrowcError(f"cannot read '{path}': {error.strerror}") from None
    record = label_bytes + 3072
    if raw.numel() == 0 or raw.numel() % record:
        raise GrowcError(f"'{path}' is not a CIFAR binary batch: {raw.numel()} bytes is not a multiple of {record}")
    rows = raw.view(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).clone(), rows[:, label_index].long()


def _cifar(spec: DataSpec, base: Path) -> Dataset:
    classes = 10 if spec.name == "cifar10" else 100
    if spec.root is None:
        raise GrowcError(f"the {spec.name} data set needs data.root: the folder holding the standard CIFAR files")
    root = (base / spec.root).resolve()
    python_dir = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    binary_dir = root / ("cifar-10-batches-bin" if classes == 10 else "cifar-100-binary")
    if not python_dir.is_dir() and not binary_dir.is_dir() and spec.download:
        try:
            import torchvision
        except ImportError as error:
            raise GrowcError("downloading CIFAR needs torchvision: pip install 'growc[vision]'") from error
        cls = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
    if python_dir.is_dir():
        names = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]) if classes == 10 else (["train"], ["test"])
        label_key = b"labels" if classes == 10 else b"fine_labels"
        parts = [[_read_python_batch(python_dir / n, label_key) for n in group] for group in names]
    elif binary_dir.is_dir():
        names = (
            ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"])
            if classes == 10
            else (["train.bin"], ["test.bin"])
        )
        label_bytes, label_index = (1, 0) if classes == 10 else (2, 1)
        parts = [[_read_binary_batch(binary_dir / n, label_bytes, label_index) for n in group] for group in names]
    else:
        raise GrowcError(
            f"no {spec.name} data under '{root}': expected the folder '{python_dir.name}' (python format) or "
            f"'{binary_dir.name}' (binary format); set data.download: true to download it"
        )
    (x, y), (x_test, y_test) = [(torch.cat([p[0] for p in g]), torch.cat([p[1] for p in g])) for g in parts]
    for labels, what in ((y, "train"), (y_test, "test")):
        if labels.min() < 0 or labels.max() >= classes:
            raise GrowcError(f"the {spec.name} {what} labels are outside 0..{classes - 1}: is this {spec.name}?")
    mean = torch.tensor(CIFAR_MEAN[classes]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[classes]).view(1, 3, 1, 1)
    x = ((x.float() / 255) - mean) / std
    x_test = ((x_test.float() / 255) - mean) / std
    augment = True if spec.augment is None else spec.augment
    black = (-mean / std).view(3)
    return Dataset(spec.name, x, y, x_test, y_test, classes, (3, 32, 32), augment=augment, black=black)


def _imagefolder(spec: DataSpec, base: Path) -> Dataset:
    if spec.root is None:
        raise GrowcError("the imagefolder data set needs data.root: a folder with train/ and val/ class folders")
    try:
        from torchvision import datasets, transforms
    except ImportError as error:
        raise GrowcError("image folders need torchvision: pip install 'growc[vision]'") from error
    root = (base / spec.root).resolve()
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise GrowcError(f"image folder '{root}' has no '{part}/' folder (expected {part}/CLASS/IMAGE files)")
    size = spec.image_size
    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=transform)
        test = datasets.ImageFolder(str(root / "val"), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise GrowcError(f"image folder '{root}': {error}") from None
    if train.classes != test.classes:
        raise GrowcError(f"image folder '{root}': train/ and val/ have different classes")
    try:
        train[0]
    except Exception as error:  # noqa: BLE001 - PIL raises many types for an unreadable image
        raise GrowcError(f"image folder '{root}': cannot read '{train.samples[0][0]}': {error}") from None
    y = torch.tensor(train.targets).long()
    y_test = torch.tensor(test.targets).long()
    augment = bool(spec.augment)
    black = -torch.tensor((0.485, 0.456, 0.406)) / torch.tensor((0.229, 0.224, 0.225))
    return Dataset(
        "imagefolder", None, y, None, y_test, len(train.classes), (3, size, size), augment, (train, test), black
    )


def load_data(spec: DataSpec, base: str | Path = ".") -> Dataset:
    """Load (or generate) the data set ``spec`` describes; relative roots resolve against ``base``."""
    base = Path(base)
    if spec.name == "mnist1d":
        data = _mnist1d(spec)
    elif spec.name == "digits":
        data = _digits(spec)
    elif spec.name == "synthetic":
        data = _synthetic(spec)
    elif spec.name in ("cifar10", "cifar100"):
        data = _cifar(spec, base)
    else:
        data = _imagefolder(spec, base)
    if spec.augment and len(data.sample_shape) != 3:
        raise GrowcError(f"data.augment crops and flips images; {spec.name} examples have shape {data.sample_shape}")
    if spec.augment is not None and data.folder is None:
        data.augment = spec.augment
    return data

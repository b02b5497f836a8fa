"""Data sets: local generation, CIFAR folders read safely, augmentation, clear errors before training."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from growc.errors import GrowcDataError, GrowcError
from growc.models.datasets import crop_and_flip, load_data
from growc.spec.data import MAX_DATA_BYTES, DataSpec, synthetic_bytes


def _write_cifar_python(root: Path, classes: int = 10, n: int = 6) -> None:
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = b"labels" if classes == 10 else b"fine_labels"
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"] if classes == 10 else ["train", "test"]
    for name in names:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: rng.integers(0, classes, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_mnist1d_is_generated_locally_with_the_requested_size() -> None:
    data = load_data(DataSpec(name="mnist1d", samples=400, test_fraction=0.25))
    assert data.x.shape == (300, 1, 40) and data.x_test.shape == (100, 1, 40)
    assert data.num_classes == 10 and set(data.y.tolist()) <= set(range(10))
    again = load_data(DataSpec(name="mnist1d", samples=400, test_fraction=0.25))
    assert torch.equal(data.x, again.x)  # deterministic from the seed


def test_digits_come_from_scikit_learn_as_images() -> None:
    data = load_data(DataSpec(name="digits", test_fraction=0.2))
    assert data.x.shape[1:] == (1, 8, 8) and len(data.y) + len(data.y_test) == 1797
    assert abs(float(data.x.mean())) < 0.5


def test_synthetic_clusters_have_the_asked_shape_and_classes() -> None:
    data = load_data(DataSpec(name="synthetic", samples=100, shape=[2, 5], classes=3))
    assert data.x.shape == (80, 2, 5) and data.num_classes == 3 and data.sample_shape == (2, 5)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_python_batches_load_normalized_with_augmentation(tmp_path: Path, classes: int) -> None:
    _write_cifar_python(tmp_path, classes)
    data = load_data(DataSpec(name=f"cifar{classes}", root=str(tmp_path)))
    train = 30 if classes == 10 else 6
    assert data.x.shape == (train, 3, 32, 32) and data.x_test.shape == (6, 3, 32, 32)
    assert data.augment is True and data.num_classes == classes


def test_cifar_binary_batches_load(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = np.zeros((4, 3073), dtype=np.uint8)
        rows[:, 0] = [1, 2, 3, 9]
        rows[:, 1:] = 255
        (folder / name).write_bytes(rows.tobytes())
    data = load_data(DataSpec(name="cifar10", root=str(tmp_path), augment=False))
    assert data.y[:4].tolist() == [1, 2, 3, 9] and data.augment is False
    (folder / "test_batch.bin").write_bytes(b"\0" * 100)
    with pytest.raises(GrowcError, match=r"is not a CIFAR binary batch: 100 bytes is not a multiple of 3073"):
        load_data(DataSpec(name="cifar10", root=str(tmp_path)))


def test_a_pickle_that_is_not_arrays_is_never_executed(tmp_path: Path) -> None:
    _write_cifar_python(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(GrowcError, match=r"data_batch_3' is not a CIFAR batch in the standard python format: refusing"):
        load_data(DataSpec(name="cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_a_missing_cifar_folder_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(
        GrowcError,
        match=r"no cifar100 data under '.*': expected the folder 'cifar-100-python' \(python format\) or "
        r"'cifar-100-binary' \(binary format\); set data.download: true to download it",
    ):
        load_data(DataSpec(name="cifar100", root=str(tmp_path)))
    with pytest.raises(GrowcError, match=r"the cifar10 data set needs data\.root"):
        load_data(DataSpec(name="cifar10"))


def test_an_image_folder_needs_train_and_val(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(GrowcError, match=r"has no 'val/' folder \(expected val/CLASS/IMAGE files\)"):
        load_data(DataSpec(name="imagefolder", root=str(tmp_path)))


def test_crop_and_flip_is_a_shifted_window_of_the_padded_image() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = crop_and_flip(x, torch.Generator().manual_seed(0), padding=2, fill=fill)
    assert torch.equal(out, crop_and_flip(x, torch.Generator().manual_seed(0), padding=2, fill=fill))  # seeded
    padded = fill.view(1, 3, 1, 1).expand(2, 3, 12, 12).clone()
    padded[:, :, 2:10, 2:10] = x
    for i in range(2):  # each output is exactly one 8x8 window of its padded image, maybe mirrored
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_cifar_padding_is_black_after_normalization(tmp_path: Path) -> None:
    _write_cifar_python(tmp_path)
    data = load_data(DataSpec(name="cifar10", root=str(tmp_path)))
    black = (0 - torch.tensor((0.4914, 0.4822, 0.4465))) / torch.tensor((0.2470, 0.2435, 0.2616))
    torch.testing.assert_close(data.black, black)


def test_cifar100_binary_reads_the_fine_label_byte(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    for name in ("train.bin", "test.bin"):
        rows = np.zeros((3, 3074), dtype=np.uint8)
        rows[:, 0] = [1, 2, 3]  # coarse labels
        rows[:, 1] = [42, 7, 99]  # fine labels: the ones CIFAR-100 classifies
        (folder / name).write_bytes(rows.tobytes())
    data = load_data(DataSpec(name="cifar100", root=str(tmp_path)))
    assert data.y.tolist() == [42, 7, 99] and data.num_classes == 100


def test_synthetic_data_beyond_the_bound_is_refused_before_allocating() -> None:
    spec = DataSpec(name="synthetic", samples=10_000_000, shape=[4096, 4096])
    assert synthetic_bytes(spec) == 4 * 4096 * 4096 * (10_000_000 + 10)
    with pytest.raises(
        GrowcDataError,
        match=r"synthetic data of 10000000 examples of shape \[4096, 4096\] needs 610\.4 TiB \(4 bytes a value\); "
        r"growc generates at most 4 GiB: lower data.samples or data.shape",
    ):
        load_data(spec)
    assert synthetic_bytes(DataSpec(name="synthetic", samples=1000, shape=[256, 1024], classes=24)) <= MAX_DATA_BYTES


def test_an_allocation_failure_while_generating_is_a_growc_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch, "randn", out_of_memory)
    with pytest.raises(GrowcError, match=r"cannot generate the synthetic data \(4 KiB\): .*can't allocate memory"):
        load_data(DataSpec(name="synthetic", samples=100, shape=[2, 5], classes=3))
    monkeypatch.setattr(torch, "randn", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(GrowcError, match=r"cannot generate the synthetic data \(4 KiB\): MemoryError"):
        load_data(DataSpec(name="synthetic", samples=100, shape=[2, 5], classes=3))

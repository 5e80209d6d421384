"""Readers (IDX, CIFAR-10/100 binary) on files written here in the real formats, good and broken,
and the batch loader's augmentation against a per-sample reference."""

import gzip
import os
import struct

import pytest
import torch
import torch.nn.functional as F

from torch_zipml import data as zdata

FASHION_DIR = zdata.DEFAULT_DATA_DIRS["fashion-mnist"]


def write_idx(path, array: torch.Tensor, compress: bool, dtype_byte: int = 0x08, extra: bytes = b""):
    header = struct.pack(">HBB", 0, dtype_byte, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    payload = header + array.to(torch.uint8).numpy().tobytes() + extra
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)
    return payload


def write_fashion(directory, n=6, compress=True, split="train", labels=None):
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if compress else ""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10 if labels is None else labels
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress)
    return images, labels


def cifar_records(n, label_bytes, seed=0):
    """n records in the CIFAR binary format: label byte(s), then 3072 pixel bytes (R, G, B planes)."""
    g = torch.Generator().manual_seed(seed)
    limits = (10,) if label_bytes == 1 else (20, 100)
    labels = torch.stack([torch.randint(0, lim, (n,), generator=g) for lim in limits], 1)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    raw = torch.cat([labels.to(torch.uint8), images.reshape(n, -1)], 1).numpy().tobytes()
    return images, labels, raw


# ---- IDX / Fashion-MNIST -------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reader_gzip_and_raw(tmp_path, compress):
    images, labels = write_fashion(tmp_path, compress=compress)
    ds = zdata.load_fashion_mnist(str(tmp_path), "train")
    assert ds.images.shape == (6, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0, 2:30, 2:30], images)
    assert not ds.images[:, :, :2].any() and not ds.images[:, :, :, 30:].any()  # black 2-pixel border
    assert torch.equal(ds.labels, labels) and ds.labels.dtype == torch.int64 and ds.num_classes == 10


def test_idx_truncated_names_file_and_record(tmp_path):
    path = str(tmp_path / "x-idx3-ubyte")
    payload = write_idx(path, torch.zeros(5, 4, 4), compress=False)
    with open(path, "wb") as f:
        f.write(payload[:-20])  # record 3 loses 4 bytes, record 4 is gone
    with pytest.raises(zdata.DataError, match=f"{path}: truncated: record 3 \\(0-based\\) of the 5"):
        zdata.read_idx(path)


def test_idx_truncated_gzip_stream_names_the_record(tmp_path):
    path = str(tmp_path / "x-idx3-ubyte.gz")
    write_idx(path, torch.randint(0, 256, (50, 28, 28)), compress=True)
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(zdata.DataError, match="truncated: record \\d+ \\(0-based\\) of the 50"):
        zdata.read_idx(path)


def test_idx_corrupt_headers_and_trailing_bytes(tmp_path):
    path = str(tmp_path / "bad")
    with open(path, "wb") as f:
        f.write(b"\x12\x34\x08\x01" + b"\x00" * 12)
    with pytest.raises(zdata.DataError, match="not an IDX file"):
        zdata.read_idx(path)
    write_idx(path, torch.zeros(3, 2), compress=False, dtype_byte=0x0D)
    with pytest.raises(zdata.DataError, match="type byte 0x0d is not supported"):
        zdata.read_idx(path)
    write_idx(path, torch.zeros(3, 2), compress=False, extra=b"\x00\x00")
    with pytest.raises(zdata.DataError, match="corrupt: 2 bytes after the 3 records"):
        zdata.read_idx(path)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b" + b"\x00" * 30)
    with pytest.raises(zdata.DataError, match="corrupt gzip stream"):
        zdata.read_idx(path)


def test_fashion_mnist_bad_label_and_count_mismatch(tmp_path):
    write_fashion(tmp_path, labels=torch.tensor([1, 2, 3, 12, 4, 5]))
    with pytest.raises(zdata.DataError, match="labels-idx1-ubyte.gz: corrupt: record 3 has label 12"):
        zdata.load_fashion_mnist(str(tmp_path))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), torch.zeros(5), compress=True)
    with pytest.raises(zdata.DataError, match="has 5 labels but .* has 6 images"):
        zdata.load_fashion_mnist(str(tmp_path))


def test_missing_data_says_how_to_install_it(tmp_path):
    with pytest.raises(zdata.DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        zdata.load_fashion_mnist(str(tmp_path))
    with pytest.raises(zdata.DataNotFoundError, match="data_batch_1.bin not found.*cifar-10-binary.tar.gz"):
        zdata.load_cifar10(str(tmp_path))
    with pytest.raises(zdata.DataNotFoundError, match="no --data-dir given"):
        zdata.load_cifar100(None)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train = zdata.load_fashion_mnist(None, "train")
    test = zdata.load_fashion_mnist(None, "test")
    assert train.images.shape == (60000, 1, 32, 32) and test.images.shape == (10000, 1, 32, 32)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


# ---- CIFAR ---------------------------------------------------------------------------------------

def test_cifar10_reader_over_the_batch_files(tmp_path):
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    expected = []
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        images, labels, raw = cifar_records(3 + i, 1, seed=i)
        (sub / name).write_bytes(raw)
        expected.append((images, labels[:, 0]))
    train = zdata.load_cifar10(str(tmp_path), "train")  # finds the standard sub-directory
    assert train.images.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32)
    assert torch.equal(train.images, torch.cat([e[0] for e in expected[:5]]))
    assert torch.equal(train.labels, torch.cat([e[1] for e in expected[:5]]))
    test = zdata.load_cifar10(str(sub), "test")
    assert torch.equal(test.images, expected[5][0]) and torch.equal(test.labels, expected[5][1])


def test_cifar100_reader_fine_and_coarse_labels(tmp_path):
    images, labels, raw = cifar_records(4, 2)
    (tmp_path / "train.bin").write_bytes(raw)
    fine = zdata.load_cifar100(str(tmp_path), "train")
    coarse = zdata.load_cifar100(str(tmp_path), "train", label="coarse")
    assert torch.equal(fine.images, images) and fine.num_classes == 100 and coarse.num_classes == 20
    assert torch.equal(fine.labels, labels[:, 1]) and torch.equal(coarse.labels, labels[:, 0])


def test_cifar_truncated_names_file_and_record(tmp_path):
    _, _, raw = cifar_records(4, 1)
    path = tmp_path / "data.bin"
    path.write_bytes(raw[:-100])
    with pytest.raises(zdata.DataError, match=f"{path}: truncated: record 3 \\(0-based\\) is incomplete"):
        zdata.read_cifar(str(path), 1, (10,))
    path.write_bytes(b"")
    with pytest.raises(zdata.DataError, match="empty file"):
        zdata.read_cifar(str(path), 1, (10,))


def test_cifar_corrupt_label_names_file_and_record(tmp_path):
    _, _, raw = cifar_records(4, 1)
    raw = bytearray(raw)
    raw[2 * 3073] = 10  # record 2's label byte
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(raw))
    with pytest.raises(zdata.DataError, match=f"{path}: corrupt: record 2 has label byte 0 = 10, outside 0..9"):
        zdata.read_cifar(str(path), 1, (10,))
    # A CIFAR-100 file read as CIFAR-10 (record size 3074 vs 3073) is caught too.
    _, _, raw100 = cifar_records(3073, 2)
    path.write_bytes(raw100)
    with pytest.raises(zdata.DataError):
        zdata.read_cifar(str(path), 1, (10,))


# ---- statistics, augmentation, loader ------------------------------------------------------------

def test_channel_stats_match_a_float64_computation():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
    mean, std = zdata.channel_stats(images)
    x = images.double() / 255
    assert torch.allclose(mean.double(), x.mean((0, 2, 3)), atol=1e-7)
    assert torch.allclose(std.double(), x.std((0, 2, 3), unbiased=False), atol=1e-7)


def test_augment_matches_per_sample_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, False, True])
    out = zdata.augment(images, offsets, flips, 4)
    for i in range(6):
        padded = F.pad(images[i], (4, 4, 4, 4))
        r, c = offsets[i].tolist()
        crop = padded[:, r:r + 32, c:c + 32]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)


def small_dataset(n=10, name="cifar10"):
    g = torch.Generator().manual_seed(0)
    return zdata.ImageDataset(name, "train", torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                              torch.arange(n) % 10, 10)


def test_loader_epochs_are_a_function_of_seed_and_epoch():
    ds = small_dataset()
    a = zdata.BatchLoader(ds, 4, train=True, seed=3)
    b = zdata.BatchLoader(ds, 4, train=True, seed=3)
    assert len(a) == 3
    batches_a = list(a.epoch(2))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(batches_a, b.epoch(2)))
    assert not torch.equal(batches_a[0][0], next(a.epoch(3))[0])
    # Starting mid-epoch gives the same batches as walking there.
    assert torch.equal(list(a.epoch(2, start_batch=1))[0][0], batches_a[1][0])
    # Every sample exactly once per epoch; the last batch is the remainder.
    assert sorted(torch.cat([y for _, y in batches_a]).tolist()) == sorted(ds.labels.tolist())
    assert zdata.BatchLoader(ds, 4, train=True, drop_last=True).__len__() == 2


def test_loader_normalises_and_eval_keeps_order():
    ds = small_dataset()
    mean, std = zdata.channel_stats(ds.images)
    loader = zdata.BatchLoader(ds, 10, train=False, mean=mean, std=std)
    x, y = next(loader.epoch(0))
    assert torch.equal(y, ds.labels)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_hflip_default_is_off_for_fashion_mnist_only():
    assert zdata.BatchLoader(small_dataset(name="fashion-mnist"), 4, train=True).hflip is False
    assert zdata.BatchLoader(small_dataset(name="cifar10"), 4, train=True).hflip is True
    # Flips off: every training image is an unflipped crop of its padded original.
    ds = small_dataset(name="fashion-mnist")
    loader = zdata.BatchLoader(ds, 10, train=True, seed=0, mean=torch.zeros(3), std=torch.ones(3))
    _, offsets, _ = loader._plan(0)
    order = loader._plan(0)[0]
    x, _ = next(loader.epoch(0))
    expected = zdata.augment(ds.images[order], offsets[order], torch.zeros(10, dtype=torch.bool), 4)
    assert torch.equal((x * 255).round().to(torch.uint8), expected)


def test_subset_is_seeded_and_order_preserving():
    ds = zdata.ImageDataset("cifar10", "train", torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20), 20)
    a, b = ds.subset(5, seed=1), ds.subset(5, seed=1)
    assert torch.equal(a.labels, b.labels) and len(a) == 5
    assert a.labels.tolist() == sorted(a.labels.tolist())
    assert not torch.equal(a.labels, ds.subset(5, seed=2).labels)
    assert ds.subset(None) is ds and ds.subset(100) is ds

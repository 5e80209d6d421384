"""Image data for the trainer: Fashion-MNIST (IDX files), CIFAR-10 and CIFAR-100 (binary versions),
kept whole in memory as uint8 tensors and augmented a batch at a time with vectorised tensor ops
(no worker processes: this is meant to run on two cores).

Formats, checked strictly (a bad file gives an error naming the file and the record):

* IDX (Fashion-MNIST, as Debian's dataset-fashion-mnist installs it in
  /usr/share/datasets/fashion-mnist, gzip-compressed or raw): a big-endian header, two zero bytes,
  a type byte (0x08 = unsigned byte, the only one these files use), the number of dimensions,
  one 32-bit size per dimension, then the data. Images are 28x28, padded with 2 black pixels
  per side to 32x32 for the CIFAR-sized ResNets.
* CIFAR-10 binary (data_batch_1..5.bin, test_batch.bin): records of 1 label byte + 3072 pixel
  bytes (1024 red, 1024 green, 1024 blue, row-major 32x32). CIFAR-100 binary (train.bin, test.bin):
  2 label bytes (coarse, then fine) + 3072 pixel bytes; the trainer uses the fine label.

Augmentation (training only): random crop of 32x32 from the image zero-padded by 4 pixels per
side, and a random horizontal flip where it makes sense: on for CIFAR (natural photographs, whose
mirror image is as likely as the image), off by default for Fashion-MNIST. Fashion-MNIST's product
photos are canonically oriented: in the training set, 92% of sandals, 99.4% of sneakers and 100% of
ankle boots have more ink on the right half than on the left (toe left), so a mirrored shoe is an
image the test set never shows; the clothes are nearly mirror-symmetric, so a flip adds little
there either. Then normalisation per channel with the training split's mean and standard deviation
(computed exactly, from pixel-value histograms).

Randomness: epoch e of a loader with seed s uses one torch.Generator seeded with
epoch_seed(s, e) = (s * 1000003 + e) mod 2**63, from which it draws, in this order, the sample
order (randperm(N)), the crop offsets (randint(0, 9, (N, 2)): row, column) and the flips
(randint(0, 2, (N,))); batch b takes positions [b * B, (b + 1) * B) of the order. So an epoch, and
any batch in it, is a pure function of (seed, epoch, batch), which is what makes resuming exact.

Data-parallel training (rank r of W processes): the batch is the global one, and rank r takes its
positions r, r + W, r + 2W, ... (as torch's DistributedSampler strides), with the crops and flips
the single-process loader would give those samples, so the ranks' shards of a batch together are
exactly the single-process batch. A last batch whose size is not a multiple of W is padded with the
first samples of the epoch's order (as DistributedSampler pads), so that every rank gets as many.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "DataError",
    "DataNotFoundError",
    "ImageDataset",
    "BatchLoader",
    "read_idx",
    "read_cifar",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "channel_stats",
    "epoch_seed",
    "DATASETS",
    "DEFAULT_DATA_DIRS",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100")
DEFAULT_DATA_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_PIXELS = 3 * 32 * 32


class DataError(ValueError):
    """A data file that is malformed: wrong header, truncated, or holding impossible values."""


class DataNotFoundError(FileNotFoundError):
    """The data set's files are not where they were looked for; the message says how to get them."""


# ---- readers ------------------------------------------------------------------------------------

def _read_bytes(path: str) -> bytes:
    """The file's bytes, decompressed if it is gzip (detected by its magic number, not its name).
    A truncated gzip stream yields what it holds, so the caller can name the incomplete record."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        d = zlib.decompressobj(wbits=31)
        data = d.decompress(raw)
        if not d.eof:  # stream cut short: keep the prefix, the record checks will name the record
            return data + d.flush()
        return data
    except zlib.error as e:
        raise DataError(f"{path}: corrupt gzip stream ({e})") from None


def read_idx(path: str) -> torch.Tensor:
    """An IDX file of unsigned bytes (gzip or raw) as a uint8 tensor of the shape its header gives."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(data)} bytes, a header needs at least 4)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic bytes {data[:4].hex()}, expected 0000 08 0n)")
    if dtype != 0x08:
        raise DataError(f"{path}: IDX type byte 0x{dtype:02x} is not supported (only 0x08, unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, the header needs {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    record = 1
    for d in dims[1:]:
        record *= d
    have = len(data) - header
    if have < dims[0] * record:
        complete = have // record if record else 0
        raise DataError(f"{path}: truncated: record {complete} (0-based) of the {dims[0]} the header declares "
                        f"is incomplete ({have} data bytes, {dims[0] * record} needed)")
    if have > dims[0] * record:
        raise DataError(f"{path}: corrupt: {have - dims[0] * record} bytes after the {dims[0]} records the header "
                        f"declares")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def read_cifar(path: str, label_bytes: int, num_labels: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """A CIFAR binary file: (images uint8 (N, 3, 32, 32), labels int64 (N, label_bytes)).
    num_labels[k] bounds label byte k (CIFAR-10: (10,); CIFAR-100: (20, 100))."""
    data = _read_bytes(path)
    size = label_bytes + CIFAR_PIXELS
    if not data:
        raise DataError(f"{path}: empty file (records of {size} bytes expected)")
    if len(data) % size:
        full = len(data) // size
        raise DataError(f"{path}: truncated: record {full} (0-based) is incomplete, the file ends {len(data) % size} "
                        f"bytes into it (records are {size} bytes: {label_bytes} label + {CIFAR_PIXELS} pixels)")
    records = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, size)
    labels = records[:, :label_bytes].to(torch.int64)
    for k, limit in enumerate(num_labels):
        bad = (labels[:, k] >= limit).nonzero()
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}: corrupt: record {i} has label byte {k} = {int(labels[i, k])}, outside "
                            f"0..{limit - 1} (is this the right CIFAR variant? CIFAR-10 records have 1 label byte, "
                            f"CIFAR-100 records 2)")
    return records[:, label_bytes:].reshape(-1, 3, 32, 32).contiguous(), labels


# ---- data sets ----------------------------------------------------------------------------------

@dataclass
class ImageDataset:
    """A whole split in memory: images uint8 (N, C, 32, 32), labels int64 (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    classes: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def subset(self, n: Optional[int], seed: int = 0) -> "ImageDataset":
        """n samples drawn without replacement (order kept) by a generator seeded with `seed`;
        the whole split when n is None or not smaller."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"subset size must be at least 1, got {n}")
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=g)[:n].sort().values
        return ImageDataset(self.name, self.split, self.images[index], self.labels[index], self.num_classes,
                            self.classes)


def _find(data_dir: str, names: Sequence[str], subdirs: Sequence[str] = ("",)) -> Optional[str]:
    for sub in subdirs:
        for name in names:
            path = os.path.join(data_dir, sub, name)
            if os.path.isfile(path):
                return path
    return None


def load_fashion_mnist(data_dir: Optional[str] = None, split: str = "train") -> ImageDataset:
    """Fashion-MNIST's `split` ("train" or "test"), padded to 1x32x32."""
    data_dir = data_dir or DEFAULT_DATA_DIRS["fashion-mnist"]
    prefix = {"train": "train", "test": "t10k"}[_check_split(split)]
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        base = f"{prefix}-{kind}-ubyte"
        path = _find(data_dir, (base + ".gz", base), ("", "fashion-mnist"))
        if path is None:
            raise DataNotFoundError(
                f"Fashion-MNIST not found: no {base}.gz or {base} in {data_dir!r}. Install it with "
                f"'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; the files go to "
                f"{DEFAULT_DATA_DIRS['fashion-mnist']}), or point --data-dir at a directory holding the four "
                f"IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...).")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{paths[0]}: expected 28x28 images (3 dimensions), the header says {tuple(images.shape)}")
    if labels.dim() != 1:
        raise DataError(f"{paths[1]}: expected 1 dimension of labels, the header says {tuple(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{paths[1]} has {labels.shape[0]} labels but {paths[0]} has {images.shape[0]} images")
    bad = (labels >= 10).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{paths[1]}: corrupt: record {i} has label {int(labels[i])}, outside 0..9")
    images = F.pad(images.unsqueeze(1), (2, 2, 2, 2))
    return ImageDataset("fashion-mnist", split, images.contiguous(), labels.to(torch.int64), 10,
                        FASHION_MNIST_CLASSES)


def _cifar_files(data_dir: Optional[str], names: Sequence[str], subdir: str, title: str, archive: str):
    if not data_dir:
        raise DataNotFoundError(f"{title}: no --data-dir given. Download the binary version ({archive}) from "
                                f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass "
                                f"--data-dir pointing at it.")
    paths = []
    for name in names:
        path = _find(data_dir, (name,), ("", subdir))
        if path is None:
            raise DataNotFoundError(
                f"{title}: {name} not found in {data_dir!r} or {os.path.join(data_dir, subdir)!r}. Download the "
                f"binary version ({archive}) from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and "
                f"point --data-dir at it.")
        paths.append(path)
    return paths


def load_cifar10(data_dir: Optional[str], split: str = "train") -> ImageDataset:
    names = ([f"data_batch_{i}.bin" for i in range(1, 6)] if _check_split(split) == "train"
             else ["test_batch.bin"])
    parts = [read_cifar(p, 1, (10,)) for p in
             _cifar_files(data_dir, names, "cifar-10-batches-bin", "CIFAR-10", "cifar-10-binary.tar.gz")]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1][:, 0] for p in parts])
    return ImageDataset("cifar10", split, images, labels, 10, CIFAR10_CLASSES)


def load_cifar100(data_dir: Optional[str], split: str = "train", label: str = "fine") -> ImageDataset:
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    name = "train.bin" if _check_split(split) == "train" else "test.bin"
    (path,) = _cifar_files(data_dir, [name], "cifar-100-binary", "CIFAR-100", "cifar-100-binary.tar.gz")
    images, labels = read_cifar(path, 2, (20, 100))
    column, classes = (1, 100) if label == "fine" else (0, 20)
    return ImageDataset("cifar100", split, images, labels[:, column].contiguous(), classes)


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def load_dataset(name: str, data_dir: Optional[str], split: str) -> ImageDataset:
    """One of DATASETS by name."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, split)
    if name == "cifar10":
        return load_cifar10(data_dir, split)
    if name == "cifar100":
        return load_cifar100(data_dir, split)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def default_hflip(name: str) -> bool:
    """Whether random horizontal flips suit the data set (see the module docstring)."""
    return name != "fashion-mnist"


# ---- batches ------------------------------------------------------------------------------------

def channel_stats(images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of uint8 images in [0, 1] units, exact (from the
    256-bin histogram of each channel, in float64), as float32 tensors of shape (C,)."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(mean)
        stds.append(var.sqrt())
    return torch.stack(means).float(), torch.stack(stds).float()


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1000003 + epoch) % 2**63


class BatchLoader:
    """Batches (x float32 normalised (B, C, 32, 32), y int64 (B,)) of a data set.

    train=True shuffles and augments (crop with `crop_padding`, flips if `hflip`), keeping the last
    incomplete batch unless drop_last; train=False walks the data in order, unchanged.
    mean, std: per-channel normalisation in [0, 1] units (usually the training split's).
    rank, world_size: yield rank's shard of each (global) batch of batch_size samples (see the
    module docstring); batch_size must then be a multiple of world_size."""

    def __init__(self, dataset: ImageDataset, batch_size: int, *, train: bool, seed: int = 0,
                 mean: Optional[torch.Tensor] = None, std: Optional[torch.Tensor] = None,
                 crop_padding: int = 4, hflip: Optional[bool] = None, drop_last: bool = False,
                 device: Optional[torch.device] = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank {rank} of {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size (the global batch) must be a multiple of world_size = {world_size}, "
                             f"got {batch_size}")
        self.rank, self.world_size = rank, world_size
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        if mean is None or std is None:
            mean, std = channel_stats(dataset.images)
        self.mean = mean.view(1, -1, 1, 1).to(device)
        self.std = std.view(1, -1, 1, 1).to(device)
        self.crop_padding = crop_padding
        self.hflip = default_hflip(dataset.name) if hflip is None else hflip
        self.drop_last = drop_last
        self.device = device

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _plan(self, epoch: int):
        n = len(self.dataset)
        if not self.train:
            return torch.arange(n), None, None
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g).bool()
        return order, offsets, flips

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch `epoch`, from batch `start_batch` on."""
        order, offsets, flips = self._plan(epoch)
        for b in range(start_batch, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.world_size > 1:
                index = self._shard(index, order)
            images = self.dataset.images[index]
            if self.train:
                images = augment(images, offsets[index], flips[index] & self.hflip, self.crop_padding)
            x = images.to(self.device).float().div_(255.0).sub_(self.mean).div_(self.std)
            yield x, self.dataset.labels[index].to(self.device)


    def _shard(self, index: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """This rank's positions of a batch, the batch padded from the epoch's start to a multiple
        of world_size."""
        pad = -index.numel() % self.world_size
        if pad:
            index = torch.cat([index, order.repeat(-(-pad // order.numel()))[:pad]])
        return index[self.rank::self.world_size]


def augment(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Crops of the images zero-padded by `padding`, at (row, column) offsets in [0, 2 * padding],
    mirrored left-right where `flips`: one gather for the whole batch."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h)                      # (n, h)
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flips.view(n, 1), w - 1 - cols, cols) + offsets[:, 1:2]  # (n, w)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                  rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

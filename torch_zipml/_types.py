"""The containers quantize and double_sample return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch


def _packed_bytes(numel: int, bits: int) -> int:
    return (numel * bits + 7) // 8


def _interval_bits(num_levels: int) -> int:
    """Bits of an interval index among num_levels - 1 intervals: ceil(log2(K - 1))."""
    return max(num_levels - 2, 0).bit_length()


@dataclass
class QuantizedTensor:
    """x ~ levels[codes] * scale, with codes of `bits` bits each."""

    codes: torch.Tensor   # uint8, the shape of x
    scale: torch.Tensor   # float32, broadcastable against x
    levels: torch.Tensor  # float32, sorted, at most 2**bits values in [-1, 1]
    bits: int
    uniform: bool = True  # the uniform grid, implied by bits and not stored

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.ops.zipml.dequantize(self.codes, self.scale, self.levels, dtype=dtype)

    def pack(self) -> torch.Tensor:
        """The codes packed at `bits` bits each (see torch_zipml.pack)."""
        return torch.ops.zipml.pack(self.codes, self.bits)

    @property
    def nbytes(self) -> int:
        """Bytes of the compact form: packed codes, scales and (unless uniform) levels."""
        extra = self.scale.numel() * 4 + (0 if self.uniform else self.levels.numel() * 4)
        return _packed_bytes(self.codes.numel(), self.bits) + extra


@dataclass
class DoubleSampled:
    """Two independent stochastic samples of a tensor (ZipML Section 4), stored as the interval index
    j of each value plus a round-up bit per sample: sample k is levels[index + bit k of up] * scale."""

    index: torch.Tensor   # uint8, the shape of x
    up: torch.Tensor      # uint8: bit 0 for the first sample, bit 1 for the second
    scale: torch.Tensor
    levels: torch.Tensor
    bits: int
    uniform: bool = True

    @property
    def shape(self) -> torch.Size:
        return self.index.shape

    @property
    def index_bits(self) -> int:
        return _interval_bits(self.levels.numel())

    def decode(self, dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.zipml.double_sample_decode(self.index, self.up, self.scale, self.levels, dtype=dtype)

    def first(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.decode(dtype)[0]

    def second(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.decode(dtype)[1]

    def pack(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(index packed at index_bits bits, up packed at 2 bits): the compact store."""
        index = (torch.ops.zipml.pack(self.index, self.index_bits) if self.index_bits
                 else self.index.new_empty(0))
        return index, torch.ops.zipml.pack(self.up, 2)

    @property
    def nbytes(self) -> int:
        """Bytes of the compact store: index_bits + 2 bits per value, scales, levels unless uniform."""
        n = self.index.numel()
        extra = self.scale.numel() * 4 + (0 if self.uniform else self.levels.numel() * 4)
        return _packed_bytes(n, self.index_bits) + _packed_bytes(n, 2) + extra

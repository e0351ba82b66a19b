"""A GGUF file's metadata and tensors, read in one pass.

`gguf.GGUFReader` builds a numpy view for every part of every metadata field: 20-40 s on the
2-core test machine for Gemma 3's 262k-token vocabulary (three arrays of 262144 items). Here
the header is parsed with `struct` and numeric arrays are single numpy views, which takes
well under a second; tensor data are views of the memory-mapped file, laid out as
GGUFReader lays them out (quantized rows as bytes), so `gguf.quants.dequantize` takes them.
Little-endian GGUF v2 and v3 (what llama.cpp writes).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConvertError

MAGIC = b"GGUF"
STRING, ARRAY = 8, 9
# GGUF value types with a fixed size: struct format and numpy dtype
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
         6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: the row length first
    tensor_type: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # floats, or quantized rows as bytes (GGUFReader's layout)


class GGUFFile:
    """`fields`: every metadata value (numbers, strings, lists of strings, numpy arrays);
    `tensors`: in file order."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise ConvertError(f"{path}: no such GGUF file")
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file
                raise ConvertError(f"{path}: not a readable GGUF file (empty)") from None
        try:
            self._parse()
        except (struct.error, ValueError, KeyError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path}: not a readable GGUF file ({e})") from None

    def _take(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self._map, self._at)
        self._at += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._take("Q")
        text = self._map[self._at : self._at + n].decode("utf-8")
        self._at += n
        return text

    def _value(self, kind: int):
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            item, count = self._take("I"), self._take("Q")
            if item == STRING:
                return [self._string() for _ in range(count)]
            if item == ARRAY:
                return [self._value(ARRAY) for _ in range(count)]
            values = np.frombuffer(self._map, NUMPY[item], count, self._at)
            self._at += values.nbytes
            return values
        return self._take(SCALARS[kind])

    def _parse(self) -> None:
        if self._map[:4] != MAGIC:
            raise ValueError("no GGUF magic number")
        self._at = 4
        version = self._take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (only little-endian v2 and v3)")
        n_tensors, n_fields = self._take("Q"), self._take("Q")
        self.fields = {}
        for _ in range(n_fields):
            key = self._string()
            self.fields[key] = self._value(self._take("I"))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = self._string(), self._take("I")
            dims = tuple(self._take("Q") for _ in range(n_dims))
            infos.append((name, dims, self._take("I"), self._take("Q")))
        align = int(self.fields.get("general.alignment", 32))
        start = -(-self._at // align) * align
        self.tensors = [self._tensor(name, dims, kind, start + offset)
                        for name, dims, kind, offset in infos]

    def _tensor(self, name: str, dims: tuple[int, ...], kind: int, at: int) -> GGUFTensor:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        qtype = GGMLQuantizationType(kind)
        rows_first = tuple(reversed(dims))
        count = int(np.prod(dims, dtype=np.int64))
        floats = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
        if qtype in floats:
            data = np.frombuffer(self._map, floats[qtype], count, at).reshape(rows_first)
        else:
            block, size = GGML_QUANT_SIZES[qtype]
            data = np.frombuffer(self._map, np.uint8, count * size // block, at)
            data = data.reshape(quant_shape_to_byte_shape(rows_first, qtype))
        return GGUFTensor(name, dims, qtype, data)

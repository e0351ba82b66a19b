"""Safetensors without loading them: header checks, and a writer that streams tensors.

Reading goes through `mx.load`, which is lazy: each tensor is read from its file
only when evaluated. Writing lays out a whole output shard's header up front
(every output shape and dtype is known before any data is read), then appends
each tensor's bytes as soon as it is computed, so nothing is buffered.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import mlx.core as mx

from .errors import ConvertError

# safetensors dtype name -> bytes per element
ST_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip

MX_TO_ST = {
    mx.bool_: "BOOL", mx.uint8: "U8", mx.int8: "I8",
    mx.uint16: "U16", mx.int16: "I16", mx.float16: "F16", mx.bfloat16: "BF16",
    mx.uint32: "U32", mx.int32: "I32", mx.float32: "F32",
    mx.uint64: "U64", mx.int64: "I64",
}  # fmt: skip

MAX_HEADER = 100 << 20  # the safetensors library's own limit


def read_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file, after checking it fits the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConvertError(f"{path}: corrupt safetensors file (truncated)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or n + 8 > size:
                raise ConvertError(f"{path}: corrupt safetensors file (bad header length)")
            text = f.read(n)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(text)
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise ConvertError(f"{path}: corrupt safetensors file (header is not JSON)") from None
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
            want = ST_SIZES[dtype] * math.prod(shape)
            ok = 0 <= a <= b and b - a == want
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ConvertError(f"{path}: corrupt safetensors file (bad entry for {name!r})")
        end = max(end, b)
    if 8 + n + end > size:
        raise ConvertError(
            f"{path}: corrupt safetensors file (truncated: {size} bytes, needs {8 + n + end})"
        )
    return header


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, from the index when there is one; all headers checked."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConvertError(f"{index}: not a valid safetensors index") from None
        files = [folder / n for n in names]
        for f in files:
            if not f.is_file():
                raise ConvertError(f"{f}: missing (listed in {index.name})")
    else:
        files = sorted(folder.glob("model*.safetensors"))
        if not files:
            raise ConvertError(f"{folder}: no model*.safetensors weight files")
    for f in files:
        read_header(f)
    return files


def _layout(entries: list[tuple[str, mx.Dtype, tuple[int, ...]]]) -> tuple[bytes, int]:
    header: dict = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = dtype.size * math.prod(shape)
        header[name] = {
            "dtype": MX_TO_ST[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text, offset


class ShardWriter:
    """Writes one safetensors file whose tensors (names, dtypes, shapes, order) are known."""

    def __init__(self, path: Path, entries: list[tuple[str, mx.Dtype, tuple[int, ...]]]):
        self.path = Path(path)
        self.expected = [(n, d, tuple(s)) for n, d, s in entries]
        head, self.data_size = _layout(self.expected)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.file.write(head)
        self.pos = 0

    def write(self, name: str, array: mx.array) -> None:
        want = self.expected[self.pos]
        got = (name, array.dtype, tuple(array.shape))
        if got != want:
            raise RuntimeError(f"internal: writing {got} where {want} was planned")
        mx.eval(array)
        view = memoryview(array)
        if not view.c_contiguous:
            array = mx.contiguous(array)
            mx.eval(array)
            view = memoryview(array)
        self.file.write(view.cast("B"))
        self.pos += 1

    def close(self) -> None:
        if self.pos != len(self.expected):
            raise RuntimeError(f"internal: {self.path.name} got {self.pos} of its tensors")
        self.file.close()

    def abort(self) -> None:
        self.file.close()

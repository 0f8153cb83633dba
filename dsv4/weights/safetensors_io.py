"""The safetensors file format, read and written one tensor at a time.

A file is: 8-byte little-endian header length n, n bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin,
end]}, "__metadata__": {...}} padded with spaces to 8 bytes, then the raw little-endian tensor bytes.
Reading uses positioned reads into a fresh tensor (no whole-file mmap), so a loaded tensor is the only copy the
process holds and the page cache is not charged to it. Writing takes the header first (shapes and dtypes known
in advance) and then streams the tensors, so a writer never holds more than one tensor.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
Spec = tuple[tuple[int, ...], torch.dtype]


class SafetensorsError(ValueError):
    """A safetensors file is truncated, malformed, or does not hold what its writer promised."""


class SafetensorsFile:
    """The header of one file; `read(name)` loads one tensor. Checks at open that every tensor lies inside the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
            if 8 + n > size:
                raise SafetensorsError(f"{self.path}: truncated header ({size} bytes, header wants {8 + n})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{self.path}: malformed header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.entries = header
        for name, e in header.items():
            self._check_entry(name, e, size)

    def _check_entry(self, name: str, e: dict, size: int) -> None:
        if e.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unknown dtype {e.get('dtype')!r}")
        begin, end = e["data_offsets"]
        want = int(np.prod(e["shape"], dtype=np.int64)) * DTYPES[e["dtype"]].itemsize
        if end - begin != want:
            raise SafetensorsError(f"{self.path}: tensor {name!r} spans {end - begin} bytes, its shape needs {want}")
        if self.data_start + end > size:
            raise SafetensorsError(f"{self.path}: truncated: tensor {name!r} ends at byte {self.data_start + end}, "
                                   f"the file has {size}")

    def keys(self) -> list[str]:
        return list(self.entries)

    def spec(self, name: str) -> Spec:
        e = self.entries[name]
        return tuple(e["shape"]), DTYPES[e["dtype"]]

    def read(self, name: str) -> torch.Tensor:
        shape, dtype = self.spec(name)
        begin, end = self.entries[name]["data_offsets"]
        raw = np.fromfile(self.path, dtype=np.uint8, count=end - begin, offset=self.data_start + begin)
        if raw.size != end - begin:
            raise SafetensorsError(f"{self.path}: tensor {name!r}: short read ({raw.size} of {end - begin} bytes)")
        return torch.from_numpy(raw).view(dtype).reshape(shape)


def header_bytes(specs: dict[str, Spec], metadata: dict[str, str] | None = None) -> bytes:
    """The length-prefixed, space-padded JSON header for tensors written in `specs` order."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (shape, dtype) in specs.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(path: Path, specs: dict[str, Spec], tensors: Iterable[tuple[str, torch.Tensor]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (yielded in `specs` order, each matching its spec) to `path` one at a time, then fsync."""
    order = iter(specs.items())
    with open(path, "wb") as f:
        f.write(header_bytes(specs, metadata))
        for name, tensor in tensors:
            want_name, (shape, dtype) = next(order, (None, (None, None)))
            if name != want_name or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise SafetensorsError(f"{path}: tensor {name!r} {tensor.dtype} {tuple(tensor.shape)} does not match "
                                       f"the header's next entry {want_name!r} {dtype} {shape}")
            f.write(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
        if next(order, None) is not None:
            raise SafetensorsError(f"{path}: fewer tensors written than the header lists")
        f.flush()
        os.fsync(f.fileno())

"""Streaming safetensors reading and writing, one tensor at a time.

We read and write the format ourselves (it is an 8-byte length, a JSON header and raw bytes)
rather than through `safetensors.numpy` because (1) numpy has no bfloat16, which `ml_dtypes`
supplies, (2) a header check up front reports a truncated or corrupt file before any work, and
(3) reading with `pread` and writing tensor by tensor keeps peak memory at one tensor.
"""

import json
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class CorruptFileError(ValueError):
  """A safetensors file is truncated or its header is not valid."""


class TensorInfo:
  __slots__ = ("name", "dtype", "shape", "start", "end")

  def __init__(self, name, dtype, shape, start, end):
    self.name, self.dtype, self.shape, self.start, self.end = name, dtype, shape, start, end

  @property
  def nbytes(self) -> int:
    return self.end - self.start


class SafetensorsFile:
  """One `.safetensors` file: header parsed and checked on open, tensors read on demand."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      prefix = f.read(8)
      if len(prefix) < 8:
        raise CorruptFileError(f"{path}: truncated ({size} bytes): no safetensors header")
      (header_len,) = struct.unpack("<Q", prefix)
      if header_len > min(_MAX_HEADER, size - 8):
        raise CorruptFileError(
            f"{path}: corrupt or truncated: header claims {header_len} bytes, file has {size}")
      raw = f.read(header_len)
    try:
      header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CorruptFileError(f"{path}: corrupt safetensors header ({e})") from None
    self.metadata = header.pop("__metadata__", None) or {}
    self.data_start = 8 + header_len
    self.tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
      try:
        dtype = DTYPES[entry["dtype"]]
        shape = tuple(int(s) for s in entry["shape"])
        start, end = (int(o) for o in entry["data_offsets"])
      except (KeyError, TypeError, ValueError):
        raise CorruptFileError(f"{path}: corrupt header entry for tensor {name!r}: {entry}") from None
      if end - start != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise CorruptFileError(f"{path}: tensor {name!r} has {end - start} bytes for shape "
                               f"{shape} of {entry['dtype']}")
      self.tensors[name] = TensorInfo(name, dtype, shape, start, end)
      data_end = max(data_end, end)
    if self.data_start + data_end > size:
      raise CorruptFileError(
          f"{path}: truncated: the header describes {self.data_start + data_end} bytes but the "
          f"file has {size}")

  def read(self, name: str) -> np.ndarray:
    info = self.tensors[name]
    with open(self.path, "rb") as f:
      buf = os.pread(f.fileno(), info.nbytes, self.data_start + info.start)
    if len(buf) != info.nbytes:
      raise CorruptFileError(f"{self.path}: truncated while reading {name!r}")
    return np.frombuffer(buf, dtype=info.dtype).reshape(info.shape)

  def read_into(self, name: str, out: np.ndarray) -> None:
    """Reads a tensor's bytes straight into `out` (C-contiguous, same dtype and size)."""
    info = self.tensors[name]
    if out.dtype != info.dtype or out.nbytes != info.nbytes or not out.flags.c_contiguous:
      raise ValueError(f"cannot read {name!r} ({info.dtype}{info.shape}) into "
                       f"{out.dtype}{out.shape}")
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(self.path, "rb") as f:
      done = 0
      while done < info.nbytes:  # pread may return less than asked for very large reads
        n = os.preadv(f.fileno(), [view[done:]], self.data_start + info.start + done)
        if n == 0:
          raise CorruptFileError(f"{self.path}: truncated while reading {name!r}")
        done += n


def write_safetensors(
    path: str,
    specs: list[tuple[str, np.dtype, tuple[int, ...]]],
    tensors: Iterator[np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
  """Writes tensors in the order of `specs` as they come from `tensors` (a generator).

  The header needs only names, dtypes and shapes, so it is written first and each tensor's bytes
  follow without the whole file in memory.
  """
  header, offset = {}, 0
  for name, dtype, shape in specs:
    nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
    header[name] = {"dtype": DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  header["__metadata__"] = {"format": "pt", **(metadata or {})}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the reference writer does
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for (name, dtype, shape), array in zip(specs, tensors, strict=True):
      array = np.require(array, requirements="C")  # ascontiguousarray would make 0-d arrays 1-d
      if array.dtype != np.dtype(dtype) or tuple(array.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r}: got {array.dtype}{array.shape}, "
                         f"planned {np.dtype(dtype)}{tuple(shape)}")
      f.write(array.tobytes())

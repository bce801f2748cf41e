"""The tensors of a Hugging Face checkpoint directory, found and read one at a time.

Safetensors (single or sharded with `model.safetensors.index.json`) is the normal path. Legacy
`pytorch_model.bin` files are read only through torch with `weights_only=True`, which refuses
arbitrary pickled objects.
"""

import os

import ml_dtypes
import numpy as np

from mmjax import jsonfile
from mmjax.convert.safetensors_io import CorruptFileError, SafetensorsFile


class TensorSource:
  """Maps tensor names to shapes/dtypes (from headers) and reads one tensor on request."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    self._files: dict[str, SafetensorsFile] = {}
    self._where: dict[str, str] = {}
    self._torch: dict[str, dict] | None = None
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(index):
      weight_map = read_weight_map(index)
      for name in sorted(set(weight_map.values())):
        path = os.path.join(hf_dir, name)
        if not os.path.exists(path):
          raise FileNotFoundError(f"{index} lists {name}, which is missing from {hf_dir}")
        self._add(SafetensorsFile(path))
      listed = set(weight_map)
      stray = sorted(set(self._where) - listed)
      if stray:
        raise CorruptFileError(f"{index} does not list tensors found in the shards: {stray[:5]}")
    elif os.path.exists(single):
      self._add(SafetensorsFile(single))
    elif _torch_bins(hf_dir):
      self._load_torch(_torch_bins(hf_dir))
    else:
      raise FileNotFoundError(
          f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model*.bin")

  def _add(self, f: SafetensorsFile):
    self._files[f.path] = f
    for name in f.tensors:
      if name in self._where:
        raise CorruptFileError(f"tensor {name!r} appears in both {self._where[name]} and {f.path}")
      self._where[name] = f.path

  def _load_torch(self, paths: list[str]):
    import torch  # only for legacy checkpoints

    self._torch = {}
    for path in paths:
      try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
      except Exception as e:  # torch raises several types for corrupt/truncated zips
        raise CorruptFileError(f"{path}: cannot be read as a weights-only torch file ({e})") from e
      for name, tensor in state.items():
        self._torch[name] = tensor
        self._where[name] = path

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    if self._torch is not None:
      return tuple(self._torch[name].shape)
    return self._files[self._where[name]].tensors[name].shape

  def dtype(self, name: str) -> np.dtype:
    return self.read(name).dtype if self._torch is not None else \
        self._files[self._where[name]].tensors[name].dtype

  def read(self, name: str) -> np.ndarray:
    if self._torch is not None:
      import torch

      t = self._torch[name].contiguous()
      if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
      return t.numpy()
    return self._files[self._where[name]].read(name)

  def read_into(self, name: str, out: np.ndarray) -> bool:
    """Reads straight into `out` when the bytes can land as they are; False otherwise."""
    if self._torch is not None:
      return False
    f = self._files[self._where[name]]
    info = f.tensors[name]
    if out.dtype != info.dtype or out.nbytes != info.nbytes or not out.flags.c_contiguous:
      return False
    f.read_into(name, out)
    return True

  def file_of(self, name: str) -> str:
    return self._where[name]


def read_weight_map(index: str) -> dict[str, str]:
  """`weight_map` of a sharded checkpoint's index: tensor name -> shard file name, each shard a
  file under the index's own directory (never a path elsewhere: `../x`, `/etc/...`)."""
  weight_map = jsonfile.read_object(index, CorruptFileError).get("weight_map")
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
    raise CorruptFileError(f"{index}: weight_map must map tensor names to shard file names")
  directory = os.path.abspath(os.path.dirname(index))
  for name in set(weight_map.values()):
    path = os.path.normpath(os.path.join(directory, name))
    if os.path.commonpath([directory, path]) != directory or path == directory:
      raise CorruptFileError(f"{index} names shard {name!r}, which is not a file in "
                             f"{os.path.dirname(index)}; shards must sit beside the index")
  return weight_map


def _torch_bins(hf_dir: str) -> list[str]:
  index = os.path.join(hf_dir, "pytorch_model.bin.index.json")
  if os.path.exists(index):
    return [os.path.join(hf_dir, n) for n in sorted(set(read_weight_map(index).values()))]
  single = os.path.join(hf_dir, "pytorch_model.bin")
  return [single] if os.path.exists(single) else []

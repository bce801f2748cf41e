"""mmjax checkpoint -> HF directory (safetensors + config.json) that transformers loads."""

import json
import os
import shutil
import sys
import uuid
from collections import OrderedDict

import numpy as np
from tqdm import tqdm

from mmjax import checkpoint
from mmjax.convert.plan import flatten, join_chunks
from mmjax.convert.safetensors_io import DTYPES, write_safetensors
from mmjax.convert.tables import table_for

DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size


class _LeafCache:
  """Loads parameter leaves from Orbax on demand, keeping only the few most recent."""

  def __init__(self, ckpt_dir: str, size: int = 4):
    self.ckpt_dir, self.size = ckpt_dir, size
    self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

  def get(self, path: str) -> np.ndarray:
    if path not in self._cache:
      tree = checkpoint.load_params(self.ckpt_dir, [tuple(path.split("/"))])
      self._cache[path] = flatten(tree)[path]
      while len(self._cache) > self.size:
        self._cache.popitem(last=False)
    self._cache.move_to_end(path)
    return self._cache[path]


def export_hf(ckpt_dir: str, out_dir: str, dtype: str | None = None, layout: str | None = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True) -> dict:
  """Writes `out_dir` with safetensors shards, index, config.json and the saved extras.

  `dtype` ('float32', 'bfloat16', ...; default: each tensor's dtype in the source checkpoint) and
  `layout` (key spelling; default: the source's) pick the output form.
  """
  family, config, hf_meta = checkpoint.read_metadata(ckpt_dir)
  checkpoint.check_params(ckpt_dir, family, config)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output directory")
  table = table_for(family)
  layouts = {lay.name: lay for lay in table.layouts}
  layout_name = layout or hf_meta.get("layout", table.layouts[0].name)
  if layout_name not in layouts:
    raise ValueError(f"unknown layout {layout_name!r} for {family.name}; known: {sorted(layouts)}")
  lay = layouts[layout_name]
  dtype_names = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
  if dtype is not None and dtype not in dtype_names:
    raise ValueError(f"--dtype must be one of {sorted(dtype_names)}, got {dtype!r}")
  leaf_meta = flatten(checkpoint.params_metadata(ckpt_dir))

  # Every saved tensor and the (leaf, layer, rule) parts it is made of, in leaf order.
  tensors: OrderedDict[str, list] = OrderedDict()
  for rule in table.rules(config):
    if rule.path not in leaf_meta:
      continue
    layers = range(leaf_meta[rule.path].shape[0]) if rule.stacked else [None]
    for i in layers:
      key = lay.to_saved(rule.hf_key(i))
      tensors.setdefault(key, []).append((rule.path, i, rule))

  def out_dtype(key: str) -> np.dtype:
    if dtype is not None:
      return DTYPES[dtype_names[dtype]]
    return DTYPES[hf_meta.get("dtype_exceptions", {}).get(key, hf_meta.get("dtype", "F32"))]

  def hf_shape(parts) -> tuple[int, ...]:
    path, i, rule = parts[0]
    shape = tuple(leaf_meta[path].shape)
    shape = rule.transform.hf_shape(shape[1:] if i is not None else shape)
    return (shape[0] * len(parts), *shape[1:]) if rule.chunk else shape

  specs = [(key, out_dtype(key), hf_shape(parts)) for key, parts in tensors.items()]
  shards, current, size = [], [], 0
  for spec in specs:
    nbytes = np.dtype(spec[1]).itemsize * int(np.prod(spec[2]))
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(spec)
    size += nbytes
  shards.append(current)

  cache = _LeafCache(ckpt_dir)

  def build(key: str, dt: np.dtype) -> np.ndarray:
    pieces = []
    parts = sorted(tensors[key], key=lambda p: p[2].chunk or (0, 1))
    for path, i, rule in parts:
      leaf = cache.get(path)
      pieces.append(rule.transform.to_hf(np.asarray(leaf[i] if i is not None else leaf)))
    if len(pieces) == 1:
      return pieces[0].astype(dt)
    groups = (*(parts[0][2].chunk or ()), 1, 1)[2]  # (index, count[, groups])
    if groups == 1:
      return np.concatenate(pieces, axis=0).astype(dt)
    return join_chunks(pieces, groups).astype(dt)  # interleaved per group (Persimmon's qkv)

  tmp = f"{out_dir.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
  os.makedirs(tmp)
  try:
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    bar = tqdm(total=len(specs), desc="export", unit="tensor", disable=not progress,
               file=sys.stderr)
    weight_map = {}
    for name, shard in zip(names, shards):
      def produce(shard=shard):
        for key, dt, _ in shard:
          yield build(key, dt)
          bar.update()
      write_safetensors(os.path.join(tmp, name), shard, produce())
      weight_map.update({key: name for key, _, _ in shard})
    bar.close()
    if len(shards) > 1:
      total = sum(np.dtype(d).itemsize * int(np.prod(s)) for _, d, s in specs)
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(ckpt_dir, checkpoint.HF_CONFIG_FILE)) as f:
      hf_config = json.load(f)
    main = {v: k for k, v in dtype_names.items()}.get(
        dtype_names.get(dtype, hf_meta.get("dtype", "F32")), "float32")
    hf_config["dtype"] = main
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    extras = os.path.join(ckpt_dir, checkpoint.HF_EXTRAS_DIR)
    if os.path.isdir(extras):
      for name in os.listdir(extras):
        shutil.copy2(os.path.join(extras, name), os.path.join(tmp, name))
    if os.path.exists(out_dir):
      os.rmdir(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"tensors": len(specs), "shards": len(shards), "layout": layout_name}

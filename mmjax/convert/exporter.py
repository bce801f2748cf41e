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


class _LeafReader:
  """Reads the parameter leaves the tensors are built from, several leaves per Orbax restore.

  A restore has a fixed cost (metadata, opening the arrays: ~0.2 s), so reading one leaf at a
  time made a 73-leaf tiny export take ~13 s. Tensors are written in leaf order, so when a
  tensor needs a leaf that is not in memory, the reader restores it together with the leaves the
  next tensors need, as many as fit in `budget` bytes beside those still held, and drops each
  leaf after the last tensor that uses it. With `budget` = the shard size, memory stays about one
  shard (plus the leaves of one tensor when they alone are larger), so a 70B model still exports
  on a host that cannot hold it.
  """

  def __init__(self, ckpt_dir: str, needs: list[tuple[str, list[str]]], nbytes: dict[str, int],
               budget: int):
    self.ckpt_dir, self.nbytes, self.budget = ckpt_dir, nbytes, budget
    self.needs = [paths for _, paths in needs]  # leaf paths of each tensor, in writing order
    self.index = {key: t for t, (key, _) in enumerate(needs)}
    self.last = {path: t for t, paths in enumerate(self.needs) for path in paths}
    self.held: dict[str, np.ndarray] = {}

  def leaves(self, key: str) -> dict[str, np.ndarray]:
    """`{path: leaf}` for tensor `key`; tensors are asked for in writing order."""
    t = self.index[key]
    self.held = {p: v for p, v in self.held.items() if self.last[p] >= t}
    group = [p for p in dict.fromkeys(self.needs[t]) if p not in self.held]
    if group:
      size = sum(self.nbytes[p] for p in (*self.held, *group))
      for path in (p for later in self.needs[t + 1:] for p in later):  # read ahead
        if path in self.held or path in group:
          continue
        if size + self.nbytes[path] > self.budget:
          break
        group.append(path)
        size += self.nbytes[path]
      tree = flatten(checkpoint.load_params(self.ckpt_dir, [tuple(p.split("/")) for p in group]))
      self.held.update({p: tree[p] for p in group})
    return {p: self.held[p] for p in self.needs[t]}


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

  order = [key for shard in shards for key, _, _ in shard]
  reader = _LeafReader(
      ckpt_dir, [(key, [path for path, _, _ in tensors[key]]) for key in order],
      {path: np.dtype(m.dtype).itemsize * int(np.prod(m.shape)) for path, m in leaf_meta.items()},
      budget=max_shard_bytes)

  def build(key: str, dt: np.dtype) -> np.ndarray:
    pieces = []
    leaves = reader.leaves(key)
    parts = sorted(tensors[key], key=lambda p: p[2].chunk or (0, 1))
    for path, i, rule in parts:
      leaf = leaves[path]
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
      for name in os.listdir(extras):  # files, and processor folders (`Family.hf_extra_dirs`)
        copy = shutil.copytree if os.path.isdir(os.path.join(extras, name)) else shutil.copy2
        copy(os.path.join(extras, name), os.path.join(tmp, name))
    if os.path.exists(out_dir):
      os.rmdir(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"tensors": len(specs), "shards": len(shards), "layout": layout_name}

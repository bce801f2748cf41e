"""Converted checkpoints on disk: `params/` (Orbax) + `mmjax.json` (family, config, HF details).

```
DIR/
  mmjax.json     {"format": 1, "family": ..., "config": {...}, "hf": {...}}
  params/        Orbax PyTree checkpoint of the parameter dict
  hf_config.json the original config.json, written back on export
  hf_extras/     tokenizer and processor files copied from the HF directory
```
"""

import collections
import contextlib
import glob
import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp

from mmjax import distributed, jsonfile, paths, staging
from mmjax.paths import absolute
from mmjax.models.registry import FAMILIES, Family, abstract_params
from mmjax.models.serialization import config_from_dict, config_to_dict

METADATA_FILE = "mmjax.json"
PARAMS_DIR = "params"
HF_CONFIG_FILE = "hf_config.json"
HF_EXTRAS_DIR = "hf_extras"
FORMAT_VERSION = 1


def write_metadata(ckpt_dir: str, family: Family, config: Any, hf: dict[str, Any]) -> None:
  meta = {"format": FORMAT_VERSION, "family": family.name, "config": config_to_dict(config),
          "hf": hf}
  with open(os.path.join(ckpt_dir, METADATA_FILE), "w") as f:
    json.dump(meta, f, indent=1)


class CheckpointError(ValueError):
  """A checkpoint directory that is damaged, tampered with, or not a checkpoint."""


def read_metadata(ckpt_dir: str) -> tuple[Family, Any, dict[str, Any]]:
  path = os.path.join(ckpt_dir, METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{ckpt_dir} is not an mmjax checkpoint: {METADATA_FILE} is missing")
  meta = jsonfile.read_object(path, CheckpointError)
  if meta.get("format") != FORMAT_VERSION:
    raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
  if meta.get("family") not in FAMILIES:
    raise CheckpointError(f"{path}: unknown family {meta.get('family')!r}; "
                          f"known: {sorted(FAMILIES)}")
  family = FAMILIES[meta["family"]]
  try:
    config = config_from_dict(family.config_cls, meta.get("config"))
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise CheckpointError(f"{path}: 'config' is not a {family.name} config ({type(e).__name__}: "
                          f"{e})") from None
  hf = meta.get("hf", {})
  if not isinstance(hf, dict):
    raise CheckpointError(f"{path}: 'hf' must be an object, found a {type(hf).__name__}")
  return family, config, hf


class _Zarr3IsData(logging.Filter):
  """Orbax 0.12.8 tells that a checkpoint holds arrays by an OCDBT manifest or zarr2 `.zarray`
  files; `mmjax convert` writes one zarr3 array (`zarr.json`) per leaf without OCDBT (see
  `importer._orbax_context`), so every load of such a checkpoint logged, twice, "TensorStore data
  files not found ... may be a sign of a malformed checkpoint". This drops exactly that record,
  and only while reading a checkpoint whose arrays are zarr3 files."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "TensorStore data files not found" not in record.getMessage()


@contextlib.contextmanager
def _reading(params_dir: str):
  zarr3 = bool(glob.glob(os.path.join(glob.escape(params_dir), "*", "*", "zarr.json")))
  notice = _Zarr3IsData()
  if zarr3:
    logging.getLogger("absl").addFilter(notice)
  try:
    yield
  finally:
    logging.getLogger("absl").removeFilter(notice)


def params_metadata(ckpt_dir: str) -> dict:
  """`{nested path: metadata with .shape and .dtype}` without reading any array."""
  params_dir = os.path.join(absolute(ckpt_dir), PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{ckpt_dir}: {PARAMS_DIR}/ is missing; the checkpoint is incomplete")
  with _reading(params_dir):
    return ocp.metadata(params_dir).metadata


def check_params(ckpt_dir: str, family: Family, config: Any) -> None:
  """The stored arrays are the ones `mmjax.json`'s config describes (same paths and shapes), so
  an edited or mismatched config is an error naming a leaf, not a failure deep in the model."""
  try:
    expected = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                jax.tree_util.tree_leaves_with_path(abstract_params(family, config))}
  except Exception as e:  # pylint: disable=broad-except  # any value the model cannot be built with
    raise CheckpointError(f"{os.path.join(ckpt_dir, METADATA_FILE)}: its config does not build a "
                          f"{family.name} model ({type(e).__name__}: {e})") from None
  stored = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_leaves_with_path(params_metadata(ckpt_dir))}
  for key in sorted(set(expected) | set(stored)):
    if expected.get(key) != stored.get(key):
      raise CheckpointError(
          f"{ckpt_dir}: {METADATA_FILE} does not match {PARAMS_DIR}/ at {key}: the config implies "
          f"{expected.get(key, 'no such parameter')}, {PARAMS_DIR}/ holds "
          f"{stored.get(key, 'no such array')} (was {METADATA_FILE} edited?)")


def load_params(ckpt_dir: str, paths: list[tuple[str, ...]] | None = None) -> dict:
  """Loads all parameters, or only `paths` (others come back as `...`), as numpy arrays."""
  meta = params_metadata(ckpt_dir)
  want = None if paths is None else {tuple(p) for p in paths}

  def leaf(path, m):
    keys = tuple(k.key for k in path)
    if want is not None and keys not in want:
      return ocp.PLACEHOLDER
    return np.empty(m.shape, m.dtype)

  abstract = jax.tree_util.tree_map_with_path(leaf, meta)
  params_dir = os.path.join(absolute(ckpt_dir), PARAMS_DIR)
  with _reading(params_dir):
    return ocp.load(params_dir, abstract)


def load_checkpoint(ckpt_dir: str) -> tuple[Family, Any, dict]:
  """(family, config, params) of a converted checkpoint, its config checked against its arrays."""
  family, config, _ = read_metadata(ckpt_dir)
  check_params(ckpt_dir, family, config)
  return family, config, load_params(ckpt_dir)


_HF_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def _write_hf_files(ckpt_dir: str, hf_config: dict | None, extras: dict[str, str]) -> None:
  if hf_config is not None:
    with open(os.path.join(ckpt_dir, HF_CONFIG_FILE), "w") as f:
      json.dump(hf_config, f, indent=2)
  if extras:
    os.makedirs(os.path.join(ckpt_dir, HF_EXTRAS_DIR))
  for name, text in extras.items():
    with open(os.path.join(ckpt_dir, HF_EXTRAS_DIR, name), "w", encoding="utf-8") as f:
      f.write(text)


def save_checkpoint(ckpt_dir: str, family: Family, config: Any, params: Any,
                    hf_from: str | None = None, hf_config: dict | None = None,
                    hf_extras: dict[str, str] | None = None) -> None:
  """Writes `params` (e.g. trained, possibly sharded) as a checkpoint in the format above.

  `hf_from`: a converted checkpoint whose HF details (config, layout, dtypes, tokenizer files) the
  new one keeps, so `mmjax export` can write it back as a transformers model. Otherwise
  `hf_config` (config.json) and `hf_extras` (file name -> text: tokenizer, processor settings)
  are written. Written to a temporary directory and renamed, so a failure leaves nothing at
  `ckpt_dir`.
  """
  ckpt_dir = absolute(ckpt_dir)
  if os.path.exists(ckpt_dir):
    raise FileExistsError(f"{ckpt_dir} exists; choose a new directory")
  # Every process of a multi-host job writes its shards into the same temporary directory.
  token = distributed.shared_token()
  local = not paths.is_remote(ckpt_dir) and jax.process_index() == 0
  if local:
    staging.remove_stale(ckpt_dir)  # left by a run killed while writing its model
  tmp = staging.create(ckpt_dir, token) if local else staging.path_for(ckpt_dir, token)
  try:
    ocp.save(os.path.join(tmp, PARAMS_DIR), params)
    if jax.process_index() == 0:
      hf = read_metadata(hf_from)[2] if hf_from else {}
      if not hf_from and hf_config is not None:  # export keeps the parameters' (main) dtype
        dtypes = collections.Counter(str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(params))
        hf = {"dtype": _HF_DTYPES.get(dtypes.most_common(1)[0][0], "F32")}
      write_metadata(tmp, family, config, hf)
      if not hf_from:
        _write_hf_files(tmp, hf_config, hf_extras or {})
      for name in (HF_CONFIG_FILE, HF_EXTRAS_DIR):
        src = os.path.join(hf_from, name) if hf_from else ""
        if os.path.isdir(src):
          shutil.copytree(src, os.path.join(tmp, name))
        elif os.path.isfile(src):
          shutil.copy2(src, os.path.join(tmp, name))
      staging.publish(tmp, ckpt_dir)
  except BaseException:
    staging.remove(tmp)
    raise
  distributed.barrier("mmjax.save_checkpoint")  # no process reads it before it is there

"""Converted checkpoints on disk: `params/` (Orbax) + `mmjax.json` (family, config, HF details).

```
DIR/
  mmjax.json     {"format": 1, "family": ..., "config": {...}, "hf": {...}}
  params/        Orbax PyTree checkpoint of the parameter dict
  hf_config.json the original config.json, written back on export
  hf_extras/     tokenizer and processor files copied from the HF directory
```
"""

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp

from mmjax import distributed
from mmjax.paths import absolute
from mmjax.models.registry import FAMILIES, Family
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


def read_metadata(ckpt_dir: str) -> tuple[Family, Any, dict[str, Any]]:
  path = os.path.join(ckpt_dir, METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{ckpt_dir} is not an mmjax checkpoint: {METADATA_FILE} is missing")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT_VERSION:
    raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
  family = FAMILIES[meta["family"]]
  return family, config_from_dict(family.config_cls, meta["config"]), meta.get("hf", {})


def params_metadata(ckpt_dir: str) -> dict:
  """`{nested path: metadata with .shape and .dtype}` without reading any array."""
  return ocp.metadata(os.path.join(absolute(ckpt_dir), PARAMS_DIR)).metadata


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
  return ocp.load(os.path.join(absolute(ckpt_dir), PARAMS_DIR), abstract)


def load_checkpoint(ckpt_dir: str) -> tuple[Family, Any, dict]:
  """(family, config, params) of a converted checkpoint."""
  family, config, _ = read_metadata(ckpt_dir)
  return family, config, load_params(ckpt_dir)


def save_checkpoint(ckpt_dir: str, family: Family, config: Any, params: Any,
                    hf_from: str | None = None) -> None:
  """Writes `params` (e.g. trained, possibly sharded) as a checkpoint in the format above.

  `hf_from`: a converted checkpoint whose HF details (config, layout, dtypes, tokenizer files) the
  new one keeps, so `mmjax export` can write it back as a transformers model. Written to a
  temporary directory and renamed, so a failure leaves nothing at `ckpt_dir`.
  """
  ckpt_dir = absolute(ckpt_dir)
  if os.path.exists(ckpt_dir):
    raise FileExistsError(f"{ckpt_dir} exists; choose a new directory")
  # Every process of a multi-host job writes its shards into the same temporary directory.
  tmp = f"{ckpt_dir.rstrip('/')}.tmp-{distributed.shared_token()}"
  try:
    ocp.save_pytree(os.path.join(tmp, PARAMS_DIR), params)
    if jax.process_index() == 0:
      hf = read_metadata(hf_from)[2] if hf_from else {}
      write_metadata(tmp, family, config, hf)
      for name in (HF_CONFIG_FILE, HF_EXTRAS_DIR):
        src = os.path.join(hf_from, name) if hf_from else ""
        if os.path.isdir(src):
          shutil.copytree(src, os.path.join(tmp, name))
        elif os.path.isfile(src):
          shutil.copy2(src, os.path.join(tmp, name))
      os.rename(tmp, ckpt_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  distributed.barrier("mmjax.save_checkpoint")  # no process reads it before it is there

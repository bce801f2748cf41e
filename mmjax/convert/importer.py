"""HF directory -> mmjax checkpoint, one tensor at a time, all or nothing."""

import json
import logging
import os
import shutil
import sys
import uuid
from collections import Counter

import ml_dtypes
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from tqdm import tqdm

from mmjax import checkpoint, jsonfile, paths, staging
from mmjax.convert.plan import ConversionError, chunk_of, check_shapes, flatten, make_plan
from mmjax.convert.safetensors_io import DTYPE_NAMES
from mmjax.convert.sources import TensorSource
from mmjax.convert.tables import table_for
from mmjax.models.registry import FAMILIES, abstract_params, family_for_hf

PARAM_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# Files beside the weights that users need again after export (tokenizer, processor, generation).
HF_EXTRA_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.json", "chat_template.jinja",
    "preprocessor_config.json", "processor_config.json", "generation_config.json",
)
_SAVE_BATCH_BYTES = 1 << 30  # leaves are handed to Orbax in batches of about this size
_IN_FLIGHT_BYTES = 4 << 30  # at most this much is being read and written at once


class _NoOcdbtMergeNotice(logging.Filter):
  """Orbax's partial-save finalize looks for OCDBT subdirectories to merge and logs a warning per
  write batch when, as here by design (see `_orbax_context`), there are none."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


def _orbax_context() -> ocp.Context:
  """How the converter writes: without compression (weights barely compress, and zstd costs 10x
  the read), without Orbax's defensive copy of host arrays (we never touch them again), and one
  array per leaf rather than OCDBT, whose writer copies arrays larger than its data files. Peak
  memory then stays at the bytes in flight."""
  ctx = ocp.Context()
  ctx.array.saving.use_compression = False
  ctx.array.saving.use_ocdbt = False
  ctx.memory.deepcopy_host_arrays = False
  return ctx


def _fill(transform, dest: np.ndarray, array: np.ndarray) -> None:
  """Transforms `array` into `dest`, casting on the way."""
  if dest.dtype == array.dtype and array.dtype.itemsize == 2:
    # Same 16-bit dtype: move raw bits, as numpy copies native integers much faster than bfloat16.
    dest, array = dest.view(np.uint16), array.view(np.uint16)
  elif dest.dtype != array.dtype:
    array = array.astype(dest.dtype)
  transform.fill(dest, array)


def _nest(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return tree


def read_hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"{hf_dir}: no such directory")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir}: no config.json")
  return jsonfile.read_object(path, ConversionError)


def _read_model_config(hf_dir: str, hf_config: dict, dtype: str):
  """(family, conversion table, hf_config, config, leaf shapes); a ConversionError naming config.json when its
  values do not describe a model of its family."""
  family = family_for_hf(hf_config)
  table = table_for(family)
  if table.read_hf_dir is not None:
    hf_config = table.read_hf_dir(hf_dir, hf_config)
  try:
    config = family.config_from_hf(hf_config, param_dtype=dtype)
    leaves = flatten(abstract_params(family, config))
  except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
    detail = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
    raise ConversionError(f"{os.path.join(hf_dir, 'config.json')} does not describe a "
                          f"{family.name} model ({detail})") from None
  return family, table, hf_config, config, {p: tuple(s.shape) for p, s in leaves.items()}


def _copy_extras(hf_dir: str, extras_dir: str, family) -> None:
  """The tokenizer, processor and generation files of `hf_dir` (`HF_EXTRA_FILES`), and the
  family's processor folders (`Family.hf_extra_dirs`) whole, into `extras_dir`."""
  names = [n for n in HF_EXTRA_FILES if os.path.isfile(os.path.join(hf_dir, n))]
  folders = [d for d in family.hf_extra_dirs if os.path.isdir(os.path.join(hf_dir, d))]
  if names or folders:
    os.makedirs(extras_dir)
  for name in names:
    shutil.copy2(os.path.join(hf_dir, name), os.path.join(extras_dir, name))
  for folder in folders:
    shutil.copytree(os.path.join(hf_dir, folder), os.path.join(extras_dir, folder))


def convert_hf(hf_dir: str, out_dir: str, dtype: str = "float32", progress: bool = True) -> dict:
  """Converts `hf_dir` into a new checkpoint at `out_dir`; returns a short report.

  Raises `ConversionError` / `CorruptFileError` / `FileNotFoundError` with the key or file at
  fault; nothing is left at `out_dir` unless the conversion completed.
  """
  if dtype not in PARAM_DTYPES:
    raise ValueError(f"--dtype must be one of {sorted(PARAM_DTYPES)}, got {dtype!r}")
  out_dir = paths.absolute(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output directory")
  hf_config = read_hf_config(hf_dir)
  family, table, hf_config, config, leaf_shapes = _read_model_config(hf_dir, hf_config,
                                                                     dtype)
  source = TensorSource(hf_dir)
  ignores = list(table.ignores)
  if table.lm_head_key and family.tied(config):
    ignores.append(r"(.*\.)?" + table.lm_head_key.replace(".", r"\."))  # tied: the embedding
  plan = make_plan(table.rules(config), leaf_shapes, source.keys(), table.layouts, ignores)
  check_shapes(plan, source.shape)
  out_dtype = PARAM_DTYPES[dtype]

  for stale in staging.remove_stale(out_dir):  # left by a convert that was killed
    print(f"removed {stale}, left by an interrupted conversion", file=sys.stderr)
  tmp = staging.create(out_dir, uuid.uuid4().hex[:8])
  notice_filter = _NoOcdbtMergeNotice()
  logging.getLogger("absl").addFilter(notice_filter)  # for this conversion's writes only
  try:
    params_path = os.path.join(tmp, checkpoint.PARAMS_DIR)
    hf_dtypes: Counter = Counter()
    per_key_dtype: dict[str, str] = {}
    from_integers: dict[str, str] = {}  # float parameters filled from integer tensors
    batch: dict[str, np.ndarray] = {}
    batch_bytes, in_flight, pending = 0, 0, None
    bar = tqdm(plan.leaves.items(), desc="convert", unit="param", disable=not progress,
               file=sys.stderr)
    for path, parts in bar:
      nbytes = int(np.prod(leaf_shapes[path])) * out_dtype.itemsize
      if batch and batch_bytes + nbytes > _SAVE_BATCH_BYTES:
        # Write this batch in the background while the next one is read (one write in flight).
        if pending is not None:
          pending.result()
        with _orbax_context():
          pending = ocp.partial.save_async(params_path, _nest(batch))
        batch, in_flight, batch_bytes = {}, batch_bytes, 0
      if pending is not None and in_flight + batch_bytes + nbytes > _IN_FLIGHT_BYTES:
        pending.result()  # a large leaf waits for the write before it is read
        pending, in_flight = None, 0
      leaf = np.empty(leaf_shapes[path], out_dtype)
      for part in parts:
        dest = leaf if part.layer is None else leaf[part.layer]
        per_key_dtype[part.key] = DTYPE_NAMES[np.dtype(source.dtype(part.key))]
        if np.dtype(source.dtype(part.key)).kind in "biu":
          from_integers[part.key] = per_key_dtype[part.key]
        if part.rule.transform.reshape_only and part.rule.chunk is None and \
            source.read_into(part.key, dest):
          continue  # the file's bytes landed in place: no copy at all
        array = source.read(part.key)
        _fill(part.rule.transform, dest, chunk_of(array, part.rule.chunk))
        del array, dest
      batch[path] = leaf
      batch_bytes += leaf.nbytes
      del leaf
    if pending is not None:
      pending.result()
    with _orbax_context():
      ocp.partial.save(params_path, _nest(batch))
      del batch
      ocp.partial.finalize(params_path)

    hf_dtypes.update(per_key_dtype.values())
    main_dtype = hf_dtypes.most_common(1)[0][0]
    hf_meta = {
        "layout": plan.layout.name,
        "dtype": main_dtype,
        "dtype_exceptions": {k: v for k, v in per_key_dtype.items() if v != main_dtype},
        "ignored_keys": plan.ignored,
    }
    stored_family, stored_config = family, hf_config
    if table.stored_as is not None:  # exported as another family's layout (see the table)
      stored_family = FAMILIES[table.stored_as]
      stored_config = table.native_hf_config(config)
      hf_meta.update(source_layout=plan.layout.name,
                     layout=table_for(stored_family).layouts[0].name, dtype_exceptions={})
    checkpoint.write_metadata(tmp, stored_family, config, hf_meta)
    with open(os.path.join(tmp, checkpoint.HF_CONFIG_FILE), "w") as f:
      json.dump(stored_config, f, indent=2)
    _copy_extras(hf_dir, os.path.join(tmp, checkpoint.HF_EXTRAS_DIR), family)
    if os.path.exists(out_dir):
      os.rmdir(out_dir)  # empty, checked above
    staging.publish(tmp, out_dir)
  except BaseException:
    staging.remove(tmp)
    raise
  finally:
    logging.getLogger("absl").removeFilter(notice_filter)
  report = {"family": family.name, "layout": plan.layout.name, "params": len(plan.leaves),
            "tensors": len(plan.hf_shapes), "ignored": len(plan.ignored), "dtype": dtype}
  if from_integers:  # a float weight stored as integers is unusual: say which, do not hide it
    report["cast_from_integer"] = from_integers
  return report

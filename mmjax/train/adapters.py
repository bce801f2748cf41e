"""LoRA in the trainer (`mmjax.nn.lora`): which leaves train, the adapter on disk, merged weights.

The factors train under the label `lora` (a part: `optim.lr_multipliers={'lora': ...}` works)
beside the components or parts `train.trainable` trains fully (e.g. the connector); the base
weights of LoRA'd layers stay frozen, without optimizer state.

```
DIR/adapter/
  lora.json   {"format": 1, "lora": {rank, alpha, targets, ...}, "family": ..., "base": ...}
  params/     Orbax PyTree of the trained parameters alone, in their nested places: the
              factors and what train.trainable trains fully (peft's `modules_to_save`)
```
"""

import json
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import orbax.checkpoint.experimental.v1 as ocp
from jax.sharding import NamedSharding, PartitionSpec

from mmjax import jsonfile
from mmjax.nn import lora
from mmjax.paths import absolute
from mmjax.train import parts as parts_lib

LABEL = "lora"
FACTOR_PART = r"(.*/)?lora_(a|b)"
ADAPTER_DIR = "adapter"
ADAPTER_FILE = "lora.json"
FORMAT_VERSION = 1


def trainable_parts(family, trainable: Sequence[str], config: lora.LoraConfig | None,
                    layouts: Mapping[str, lora.Layout]) -> tuple[tuple[str, ...], dict]:
  """`(names, parts)` for `mmjax.train.parts`: `trainable` plus the LoRA factors."""
  if config is None:
    return tuple(trainable), dict(family.parts)
  label = parts_lib.labeller(trainable, family.parts)
  full = sorted(p for p in layouts if label((*p.split("/"), "kernel")) is not None)
  if full:
    raise ValueError(f"lora.targets {full[:4]} are in components train.trainable trains fully "
                     f"({tuple(trainable)}): name only what trains besides LoRA, e.g. "
                     "train.trainable=('connector',) or ()")
  return (*trainable, LABEL), {**family.parts, LABEL: FACTOR_PART}


def fit_shardings(shardings: Any, abstract: Any) -> Any:
  """`shardings` (a train state's) with the LoRA factors' rank axis replicated where its mesh
  axes do not divide it (rank 8 on fsdp 32: jit takes no uneven sharding); other leaves as
  they are. `abstract`: the state's shapes, the same tree."""
  def fit(path, sharding, leaf):
    if not (isinstance(sharding, NamedSharding) and path and
            getattr(path[-1], "key", None) in lora.FACTORS):
      return sharding
    spec = [*sharding.spec, *[None] * (len(leaf.shape) - len(sharding.spec))]
    for i, names in enumerate(spec):
      names = (names,) if isinstance(names, str) else tuple(names or ())
      if leaf.shape[i] % math.prod(sharding.mesh.shape[n] for n in names):
        spec[i] = None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec), memory_kind=sharding.memory_kind)

  return jax.tree_util.tree_map_with_path(fit, shardings, abstract)


def layouts_of(family, model_config, config: lora.LoraConfig) -> dict[str, lora.Layout]:
  """The LoRA'd einsums of a model (an abstract init: no array is made), targets checked."""
  module = family.build(model_config)
  example = family.example_inputs(model_config)
  with lora.applied(config) as recorder:
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example))["params"]
  leaves = jax.tree_util.tree_leaves_with_path(
      params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  paths = ["/".join(k.key for k in path[:-1]) for path, _ in leaves if path[-1].key == "kernel"]
  lora.check_targets(config, recorder.layouts, paths)
  return dict(recorder.layouts)


def merged(family, model_config, params: dict, config: lora.LoraConfig) -> dict:
  """Parameters with the factors merged into their kernels (full LoRA), as the model without
  LoRA reads them: what `DIR/model` and `mmjax export` hold."""
  return lora.merge(params, layouts_of(family, model_config, config), config)


def save_adapter(path: str, config: lora.LoraConfig, family, trained: dict,
                 base: str | None) -> str:
  """Writes the `trained` parameters (the train state's: factors and fully trained parts) and
  the LoRA settings at `path` (a new directory); `base`: the weights they adapt."""
  path = absolute(path)
  ocp.save(os.path.join(path, "params"), trained)
  if jax.process_index() == 0:
    with open(os.path.join(path, ADAPTER_FILE), "w") as f:
      json.dump({"format": FORMAT_VERSION, "lora": config.to_dict(), "family": family.name,
                 "base": base}, f, indent=1)
  return path


def load_adapter(path: str) -> tuple[lora.LoraConfig, dict, dict[str, Any]]:
  """(LoRA settings, trained parameters as arrays, the whole `lora.json`) of an adapter."""
  meta_path = os.path.join(path, ADAPTER_FILE)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path} is not a LoRA adapter: {ADAPTER_FILE} is missing")
  meta = jsonfile.read_object(meta_path, ValueError)
  if meta.get("format") != FORMAT_VERSION:
    raise ValueError(f"{meta_path}: unsupported adapter format {meta.get('format')!r}")
  settings = dict(meta["lora"])
  settings["targets"] = tuple(settings["targets"])
  config = lora.LoraConfig(**settings)
  return config, ocp.load(os.path.join(absolute(path), "params")), meta


def merge_into_checkpoint(base_dir: str, adapter_dir: str, out_dir: str) -> str:
  """A converted checkpoint at `out_dir`: `base_dir`'s weights with `adapter_dir`'s fully
  trained parts and its factors merged in (`W + alpha / r * A B`), keeping the base's HF
  details for `mmjax export`."""
  from mmjax import checkpoint as converted
  from mmjax.train.parts import merge as merge_trees

  config, factors, meta = load_adapter(adapter_dir)
  family, model_config, params = converted.load_checkpoint(base_dir)
  if meta.get("family") != family.name:
    raise ValueError(f"{adapter_dir} adapts a {meta.get('family')!r} model; {base_dir} is "
                     f"{family.name!r}")
  converted.save_checkpoint(out_dir, family, model_config,
                            merged(family, model_config, merge_trees(factors, params), config),
                            hf_from=base_dir)
  return out_dir

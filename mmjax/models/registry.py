"""The model families mmjax knows, found by name, by config.json `model_type`, by config or module.

A family is a plug-in (`mmjax.models.family.Family`) declared in its own module; adding one is a
new module under `mmjax/models/` (with its conversion table under `mmjax/convert/tables/`) plus its
line in `FAMILY_MODULES`.
"""

import importlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from mmjax.models.family import Family, Unsupported

# Modules under mmjax/models/ that declare `FAMILIES` (a tuple of Family objects).
FAMILY_MODULES = (
    "llava",
    "llava_next",
    "llava_onevision",
    "pixtral",
    "fuyu",
    "standalone",
    "t5",
    "qwen_vl",
    "internvl",
    "mllama",
    "idefics",
    "idefics2",
    "dual_encoder",
    "blip2",
    "blip2_t5",
    "blip2_retrieval",
)


def _load() -> dict[str, Family]:
  families: dict[str, Family] = {}
  for module in FAMILY_MODULES:
    for family in importlib.import_module(f"mmjax.models.{module}").FAMILIES:
      if family.name in families:
        raise ValueError(f"two families are named {family.name!r}")
      families[family.name] = family
  return families


FAMILIES: dict[str, Family] = _load()
MODEL_TYPES: dict[str, str] = {t: f.name for f in FAMILIES.values() for t in f.hf_model_types}


def family_for_hf(hf_config: Mapping[str, Any]) -> Family:
  """The family that reads this config.json: the one that claims it (`Family.claims_hf`, e.g. by
  its vision config), else the one of its `model_type`."""
  claimed = [f for f in FAMILIES.values() if f.claims_hf(hf_config)]
  if len(claimed) > 1:
    raise ValueError(f"families {[f.name for f in claimed]} all claim this config.json "
                     f"(model_type {hf_config.get('model_type')!r})")
  if claimed:
    return claimed[0]
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"unsupported model_type {model_type!r} in config.json; supported: "
                     f"{sorted(MODEL_TYPES)}")
  return FAMILIES[MODEL_TYPES[model_type]]


def family_named(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def family_of_config(config: Any) -> Family:
  """The (first) family whose config class this config is."""
  for family in FAMILIES.values():
    if type(config) is family.config_cls:
      return family
  raise ValueError(f"no model family has configs of type {type(config).__name__}")


def family_of_module(module: nn.Module) -> Family:
  """The (first) family whose module class built this module."""
  for family in FAMILIES.values():
    if type(module) is family.module_cls:
      return family
  raise ValueError(f"no model family builds modules of type {type(module).__name__}")


def abstract_params(family: Family, config) -> dict:
  """Shapes and dtypes of every parameter, without allocating them: `{path: ShapeDtypeStruct}`."""
  module = family.build(config)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *family.example_inputs(config)))
  return nn.unbox(shapes)["params"]


def init_params(family: Family, config, rng: jax.Array) -> dict:
  module = family.build(config)
  return nn.unbox(module.init(rng, *family.example_inputs(config)))["params"]


def forward_from_hf_inputs(family: Family, config, params, inputs: Mapping[str, np.ndarray]):
  """Runs the model on arrays as its transformers processor makes them; float32 logits."""
  return family.forward_from_hf_inputs(config, params, inputs)


__all__ = ["FAMILIES", "MODEL_TYPES", "Family", "Unsupported", "abstract_params",
           "family_for_hf", "family_named", "family_of_config", "family_of_module",
           "forward_from_hf_inputs", "init_params"]

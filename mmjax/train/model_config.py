"""The model a training config describes, or the one a checkpoint was converted from."""

import dataclasses
from typing import Any

from mmjax.connectors.projector import ProjectorConfig
from mmjax.decoders.config import DecoderConfig
from mmjax.encoders.vit import VisionConfig
from mmjax.models import internvl, qwen_vl
from mmjax.models.llava import LlavaConfig
from mmjax.models.registry import FAMILIES, Family
from mmjax.nn.rope import RopeConfig

EXECUTION_KEYS = ("dtype", "param_dtype", "remat_policy", "attention_backend")


def with_execution(config: Any, **execution) -> Any:
  """Sets dtypes / remat / attention backend on every part of a (nested) model config."""
  execution = {k: v for k, v in execution.items() if v is not None}
  changes = {}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value) and not isinstance(value, RopeConfig):
      changes[field.name] = with_execution(value, **execution)
    elif field.name in execution:
      changes[field.name] = execution[field.name]
  return dataclasses.replace(config, **changes)


# Execution keys set the whole model, or each stack apart: `remat_policy={"encoder": "none",
# "decoder": "dots"}` (stack -> field of the family config).
STACK_FIELDS = {"encoder": "vision", "decoder": "decoder"}


def apply_execution(config: Any, execution: dict) -> Any:
  """`with_execution` for values that cover the whole model, then per-stack dict values."""
  whole = {k: v for k, v in execution.items() if not isinstance(v, dict)}
  config = with_execution(config, **whole)
  for key, per_stack in execution.items():
    if not isinstance(per_stack, dict):
      continue
    for stack, value in per_stack.items():
      field = STACK_FIELDS.get(stack)
      if field is None or not hasattr(config, field):
        raise ValueError(f"model.{key}: unknown stack {stack!r} (known: {sorted(STACK_FIELDS)})")
      config = dataclasses.replace(
          config, **{field: with_execution(getattr(config, field), **{key: value})})
  return config


def llava_from_dict(model: dict) -> LlavaConfig:
  """`model.{vision, projector, decoder, ...}` dicts of a training config -> LlavaConfig."""
  execution = {k: _plain(model[k]) for k in EXECUTION_KEYS if model.get(k) is not None}
  vision = VisionConfig(**dict(model["vision"]))
  decoder_args = dict(model["decoder"])
  rope = RopeConfig(**dict(decoder_args.pop("rope", {})))
  decoder = DecoderConfig(rope=rope, **decoder_args)
  layers = tuple(model.get("feature_layers", (-1,)))
  projector = ProjectorConfig(in_features=vision.hidden_size * len(layers),
                              out_features=decoder.hidden_size, **dict(model["projector"]))
  config = LlavaConfig(vision=vision, projector=projector, decoder=decoder,
                       image_token_id=int(model["image_token_id"]), feature_layers=layers,
                       feature_select=model.get("feature_select", "full"))
  return apply_execution(config, execution)


def _plain(value):
  return dict(value) if hasattr(value, "items") else value


def build_model_config(model: dict, checkpoint_config: tuple[Family, Any] | None = None):
  """(family, config): from the checkpoint when given (execution keys still apply), else from
  the training config's `model` section."""
  execution = {k: _plain(model[k]) for k in EXECUTION_KEYS if model.get(k) is not None}
  if checkpoint_config is not None:
    family, config = checkpoint_config
    return family, apply_execution(config, execution)
  family_name = model.get("family", "llava")
  if family_name in qwen_vl.MODEL_TYPES:
    config = qwen_vl.config_from_dict({k: v for k, v in model.items() if k not in EXECUTION_KEYS})
    return FAMILIES[family_name], apply_execution(config, execution)
  if family_name == "internvl":
    config = internvl.config_from_dict({k: v for k, v in model.items()
                                        if k not in EXECUTION_KEYS and k != "family"})
    return FAMILIES["internvl"], apply_execution(config, execution)
  if family_name != "llava":
    raise ValueError(f"training configs can describe model.family 'llava', 'internvl' or "
                     f"{', '.join(map(repr, qwen_vl.MODEL_TYPES))}, got {family_name!r}; other "
                     "families train from a converted checkpoint (train.init_from)")
  return FAMILIES["llava"], llava_from_dict(model)

"""The model a training config describes, or the one a checkpoint was converted from."""

import dataclasses
from typing import Any

from mmjax.connectors.projector import ProjectorConfig
from mmjax.decoders.config import DecoderConfig
from mmjax.encoders.vit import VisionConfig
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


def llava_from_dict(model: dict) -> LlavaConfig:
  """`model.{vision, projector, decoder, ...}` dicts of a training config -> LlavaConfig."""
  execution = {k: model[k] for k in EXECUTION_KEYS if model.get(k) is not None}
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
  return with_execution(config, **execution)


def build_model_config(model: dict, checkpoint_config: tuple[Family, Any] | None = None):
  """(family, config): from the checkpoint when given (execution keys still apply), else from
  the training config's `model` section."""
  execution = {k: model.get(k) for k in EXECUTION_KEYS}
  if checkpoint_config is not None:
    family, config = checkpoint_config
    return family, with_execution(config, **execution)
  family_name = model.get("family", "llava")
  if family_name != "llava":
    raise ValueError(f"training configs can describe model.family 'llava' for now, got "
                     f"{family_name!r}; other families train from a converted checkpoint "
                     "(train.init_from)")
  return FAMILIES["llava"], llava_from_dict(model)

"""The model a training config describes, or the one a checkpoint was converted from."""

import dataclasses
from typing import Any, Mapping

from mmjax.models.family import EXECUTION_KEYS, Family
from mmjax.models.registry import family_named
from mmjax.nn.rope import RopeConfig

__all__ = ["EXECUTION_KEYS", "apply_execution", "build_model_config", "with_execution"]


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


def apply_execution(config: Any, execution: dict,
                    stacks: Mapping[str, str] = {"encoder": "vision", "decoder": "decoder"}) -> Any:
  """`with_execution` for values that cover the whole model, then per-stack dict values
  (`remat_policy={"encoder": "none", "decoder": "dots"}`); `stacks` maps a stack name to the
  field of the family config holding its config ('' for the config itself)."""
  whole = {k: v for k, v in execution.items() if not isinstance(v, dict)}
  config = with_execution(config, **whole)
  for key, per_stack in execution.items():
    if not isinstance(per_stack, dict):
      continue
    for stack, value in per_stack.items():
      field = stacks.get(stack)
      if field is None or (field and not hasattr(config, field)):
        raise ValueError(f"model.{key}: unknown stack {stack!r} (known: {sorted(stacks)})")
      if not field:
        config = with_execution(config, **{key: value})
        continue
      config = dataclasses.replace(
          config, **{field: with_execution(getattr(config, field), **{key: value})})
  return config


def _plain(value):
  return dict(value) if hasattr(value, "items") else value


def build_model_config(model: dict, checkpoint_config: tuple[Family, Any] | None = None):
  """(family, config): from the checkpoint when given (execution keys and the family's
  `with_training_settings` still apply), else from the training config's `model` section
  (`model.family`, default 'llava')."""
  execution = {k: _plain(model[k]) for k in EXECUTION_KEYS if model.get(k) is not None}
  if checkpoint_config is not None:
    family, config = checkpoint_config
    config = family.with_training_settings(
        config, {k: _plain(v) for k, v in model.items() if k not in EXECUTION_KEYS})
  else:
    family = family_named(model.get("family", "llava"))
    config = family.config_from_training(
        {k: _plain(v) for k, v in model.items() if k not in EXECUTION_KEYS})
  return family, apply_execution(config, execution, family.stacks)

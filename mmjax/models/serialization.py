"""Model configs (nested frozen dataclasses) to JSON-ready dicts and back."""

import dataclasses
import types
import typing
from typing import Any


def config_to_dict(config: Any) -> dict[str, Any]:
  return dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
  """Rebuilds `cls` from `config_to_dict` output; unknown keys are an error naming them."""
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - names)
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
  return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def _coerce(hint: Any, value: Any) -> Any:
  if value is None:
    return None
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    for option in options:  # the first option that takes the value
      if dataclasses.is_dataclass(option) and isinstance(value, dict):
        return config_from_dict(option, value)
      if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    return value
  if dataclasses.is_dataclass(hint):
    return config_from_dict(hint, value)
  if origin is tuple:
    return tuple(value)
  return value

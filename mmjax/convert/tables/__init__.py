"""Conversion tables, one module per family (or group of families), found by `Family.table`.

A table module defines:

  rules(config) -> list[Rule]   canonical HF keys <-> parameter paths for this model config
  LAYOUTS                       the key spellings saves use (`Layout`s; the first is the default)

and optionally:

  IGNORES                       regexes of saved keys that are buffers, never parameters
  LM_HEAD_KEY                   the canonical LM head key, absent from saves with tied embeddings
  read_hf_dir(hf_dir, cfg)      config facts kept beside config.json (e.g. in tokenizer files)
  STORED_AS, native_hf_config(config)
                                checkpoints are stored as that family, with that config.json, so
                                that export writes its layout (InternVL's original release)
"""

import dataclasses
import importlib
from typing import Any, Callable

from mmjax.convert.rules import Layout, Rule
from mmjax.convert.tables.common import BUFFER_IGNORES


@dataclasses.dataclass(frozen=True)
class ConversionTable:
  rules: Callable[[Any], list[Rule]]
  layouts: tuple[Layout, ...]
  ignores: tuple[str, ...] = BUFFER_IGNORES
  lm_head_key: str | None = "lm_head.weight"
  read_hf_dir: Callable[[str, dict], dict] | None = None
  stored_as: str | None = None
  native_hf_config: Callable[[Any], dict] | None = None


def table_for(family) -> ConversionTable:
  """The conversion table of a family; a clear error when it has none."""
  if family.table is None:
    raise ValueError(f"{family.name!r} models have no conversion table (they do not come from or "
                     "go to transformers checkpoints)")
  module = importlib.import_module(f"mmjax.convert.tables.{family.table}")
  return ConversionTable(
      rules=module.rules, layouts=module.LAYOUTS,
      ignores=getattr(module, "IGNORES", BUFFER_IGNORES),
      lm_head_key=getattr(module, "LM_HEAD_KEY", "lm_head.weight"),
      read_hf_dir=getattr(module, "read_hf_dir", None),
      stored_as=getattr(module, "STORED_AS", None),
      native_hf_config=getattr(module, "native_hf_config", None))

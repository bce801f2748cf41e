"""Causal LMs: Llama-family (`llama`, `mistral`, `qwen2`, `qwen3`) and Persimmon."""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed
from mmjax.convert.tables.persimmon import persimmon_decoder_rules


def rules(config=None) -> list[Rule]:
  if config is not None and config.model_type == "persimmon":  # its own key names
    decoder = persimmon_decoder_rules(config)
  else:
    decoder = decoder_rules()
  return prefixed(decoder, "model.", "decoder/") + [
      Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)]


LAYOUTS = (Layout("v5"),)

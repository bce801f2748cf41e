"""Llama-family causal LMs (`llama`, `mistral`, `qwen2`, `qwen3`)."""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed


def rules(config=None) -> list[Rule]:
  return prefixed(decoder_rules(), "model.", "decoder/") + [
      Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)]


LAYOUTS = (Layout("v5"),)

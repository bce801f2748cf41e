"""Causal LMs: Llama-family (`llama`, `mistral`, `qwen2`, `qwen3`), Persimmon and OPT."""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed
from mmjax.convert.tables.opt import opt_decoder_rules
from mmjax.convert.tables.persimmon import persimmon_decoder_rules


def rules(config=None) -> list[Rule]:
  if config is not None and config.model_type == "persimmon":  # its own key names
    decoder = persimmon_decoder_rules(config)
  elif config is not None and config.model_type == "opt":  # its own names, under model.decoder.
    return prefixed(opt_decoder_rules(), "model.decoder.", "decoder/") + [
        Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)]
  else:
    decoder = decoder_rules()
  return prefixed(decoder, "model.", "decoder/") + [
      Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)]


LAYOUTS = (Layout("v5"),)

"""Fuyu (transformers `fuyu`): the patch Linear `vision_embed_tokens` and a Persimmon decoder."""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import prefixed
from mmjax.convert.tables.persimmon import persimmon_decoder_rules


def rules(config) -> list[Rule]:
  return (
      prefixed(persimmon_decoder_rules(config.decoder), "model.language_model.", "decoder/")
      + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX),
         Rule("model.vision_embed_tokens.weight", "connector/kernel", MATRIX),
         Rule("model.vision_embed_tokens.bias", "connector/bias")]
  )


LAYOUTS = (
    Layout("v5"),
    # transformers v4 (the original release) and what v5's save_pretrained writes
    Layout("v4", (("model.language_model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head."),
                  ("model.vision_embed_tokens.", "vision_embed_tokens."))),
)

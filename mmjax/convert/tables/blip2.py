"""Conversion table of BLIP-2 (`blip-2`, `Blip2ForConditionalGeneration`) and InstructBLIP
(`instructblip`, `InstructBlipForConditionalGeneration`: the same keys, and the Q-Former's text
embeddings under `qformer.embeddings.`).

transformers 4.x and 5.x save the same keys: `vision_model.`, `query_tokens`, `qformer.`,
`language_projection.`, `language_model.` (an `OPTForCausalLM`'s `model.decoder.` and
`lm_head.`, or a Llama-family `LlamaForCausalLM`'s `model.` and `lm_head.`). The LM head is
absent from saves with tied embeddings (OPT's default).
"""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed
from mmjax.convert.tables.opt import opt_decoder_rules
from mmjax.convert.tables.qformer import QUERY_TOKENS, blip2_vision_rules, qformer_rules

LM_HEAD_KEY = "language_model.lm_head.weight"


def language_model_rules(decoder) -> list[Rule]:
  """An OPT or Llama-family causal LM under `language_model.` / `decoder/`."""
  if decoder.model_type == "opt":
    body = prefixed(opt_decoder_rules(), "language_model.model.decoder.", "decoder/")
  else:
    body = prefixed(decoder_rules(), "language_model.model.", "decoder/")
  return body + [Rule(LM_HEAD_KEY, "decoder/lm_head/kernel", MATRIX)]


def rules(config) -> list[Rule]:
  return bridge_rules(config) + language_model_rules(config.decoder)


def bridge_rules(config) -> list[Rule]:
  """The vision tower, the Q-Former and its projection: what every BLIP-2 has before its
  language model."""
  return (prefixed(blip2_vision_rules(), "vision_model.", "encoder/")
          + [QUERY_TOKENS.prefixed("", "connector/qformer/")]
          + prefixed(qformer_rules(config.qformer), "qformer.", "connector/qformer/")
          + [Rule("language_projection.weight", "connector/projection/kernel", MATRIX),
             Rule("language_projection.bias", "connector/projection/bias")])


LAYOUTS = (Layout("v5"),)

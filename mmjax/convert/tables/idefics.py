"""Conversion table of IDEFICS v1 (`idefics`, `IdeficsForVisionText2Text`).

transformers' two layer lists, `model.layers.{i}` and `model.gated_cross_attn_layers.{i}`, map
onto the merged decoder's segments and slots (`mmjax.models.idefics_config`); the decoupled
embedding and LM head's additional rows onto their own parameters.
"""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_layer_rules, prefixed, segment_rules, vision_rules
from mmjax.convert.tables.gated_cross import gated_cross_layer_rules
from mmjax.convert.tables.perceiver import idefics_perceiver_rules
from mmjax.decoders.layout import SELF
from mmjax.decoders.llama import layer_plan
from mmjax.models.idefics_config import GATED, hf_layer_index


def text_rules(decoder) -> list[Rule]:
  """The language model, relative to `model.` / `decoder/`."""
  kinds = {SELF: ("layers.{i}.", decoder_layer_rules()),
           GATED: ("gated_cross_attn_layers.{i}.", gated_cross_layer_rules())}
  return [Rule("embed_tokens.weight", "embed/embedding"),
          Rule("embed_tokens.additional_embedding.weight", "embed_additional/embedding"),
          Rule("norm.weight", "norm/scale"),
          *segment_rules(layer_plan(decoder), kinds, lambda i: hf_layer_index(decoder, i))]


def rules(config) -> list[Rule]:
  return (prefixed(vision_rules(), "model.vision_model.", "encoder/")
          + prefixed(idefics_perceiver_rules(), "model.perceiver_resampler.", "connector/")
          + prefixed(text_rules(config.decoder), "model.", "decoder/")
          + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX),
             Rule("lm_head.additional_fc.weight", "decoder/lm_head_additional/kernel", MATRIX)])


LAYOUTS = (Layout("v5"),)

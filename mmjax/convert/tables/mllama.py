"""Conversion table of Llama 3.2 Vision (`mllama`).

Canonical keys: transformers v5's module names (`model.vision_model.*`,
`model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`); `save_pretrained` writes
the `v4` spelling (`vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`,
`language_model.lm_head.*`). HF's flat `layers.{i}` list of self- and cross-attention layers maps
onto the decoder's segments and slots (`mmjax.decoders.layout`): each rule of a slot names the HF
layer of every repeat.
"""

from mmjax.convert.rules import HEADS_MATRIX, MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_layer_rules, prefixed, segment_rules
from mmjax.convert.tables.mllama_vision import mllama_vision_rules
from mmjax.decoders.layout import CROSS, SELF
from mmjax.decoders.llama import layer_plan


def cross_layer_rules() -> list[Rule]:
  """`MllamaCrossAttentionDecoderLayer`, relative to `layers.{i}.` / the slot's parameters."""
  return [
      *[Rule(f"cross_attn.{n}_proj.weight", f"attn/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
      Rule("cross_attn.o_proj.weight", "attn/o/kernel", MATRIX),
      Rule("cross_attn.q_norm.weight", "attn/q_norm/scale"),
      Rule("cross_attn.k_norm.weight", "attn/k_norm/scale"),
      Rule("input_layernorm.weight", "attn_norm/scale"),
      Rule("post_attention_layernorm.weight", "mlp_norm/scale"),
      Rule("cross_attn_attn_gate", "attn_gate"), Rule("cross_attn_mlp_gate", "mlp_gate"),
      *[Rule(f"mlp.{n}_proj.weight", f"mlp/{n}/kernel", MATRIX) for n in ("gate", "up", "down")],
  ]


def text_rules(decoder) -> list[Rule]:
  """The language model, relative to `model.language_model.` / `decoder/`."""
  return [Rule("embed_tokens.weight", "embed/embedding"), Rule("norm.weight", "norm/scale"),
          *segment_rules(layer_plan(decoder), {SELF: ("layers.{i}.", decoder_layer_rules()),
                                               CROSS: ("layers.{i}.", cross_layer_rules())})]


def rules(config) -> list[Rule]:
  return (prefixed(mllama_vision_rules(), "model.vision_model.", "encoder/")
          + [Rule("model.multi_modal_projector.weight", "connector/linear_1/kernel", MATRIX),
             Rule("model.multi_modal_projector.bias", "connector/linear_1/bias")]
          + prefixed(text_rules(config.decoder), "model.language_model.", "decoder/")
          + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)])


LAYOUTS = (
    Layout("v5"),
    Layout("v4", (("model.language_model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head."),
                  ("model.vision_model.", "vision_model."),
                  ("model.multi_modal_projector.", "multi_modal_projector."))),
)

"""CLIP / SigLIP dual encoders (transformers `CLIPModel`, `SiglipModel`): the vision tower's rules
under `vision_model.`, the text tower under `text_model.`, the projections and logit scale/bias."""

from mmjax.convert.rules import FLAT, MATRIX, SAME, Layout, Rule
from mmjax.convert.tables.common import encoder_layer_rules, prefixed, vision_rules


def text_rules() -> list[Rule]:
  """CLIP / SigLIP text towers (`mmjax.encoders.text_tower`), relative to `text_model.`."""
  return [
      Rule("embeddings.token_embedding.weight", "token_embed/embedding"),
      Rule("embeddings.position_embedding.weight", "pos_embed"),
      *prefixed(encoder_layer_rules(), "encoder.layers.{i}.", "layers/"),
      Rule("final_layer_norm.weight", "final_norm/scale"),
      Rule("final_layer_norm.bias", "final_norm/bias"),
      Rule("head.weight", "head/kernel", MATRIX), Rule("head.bias", "head/bias"),  # SigLIP
  ]


def rules(config) -> list[Rule]:
  # CLIP keeps its logit scale as a 0-d tensor, SigLIP its scale and bias as [1]: the parameters
  # are scalars in both.
  scalar = SAME if config.kind == "clip" else FLAT
  return (prefixed(vision_rules(), "vision_model.", "encoder/")
          + prefixed(text_rules(), "text_model.", "text_encoder/")
          + [Rule("visual_projection.weight", "head/visual_projection/kernel", MATRIX),
             Rule("text_projection.weight", "head/text_projection/kernel", MATRIX),
             Rule("logit_scale", "head/logit_scale", scalar),
             Rule("logit_bias", "head/logit_bias", scalar)])


LAYOUTS = (Layout("v5"),)
LM_HEAD_KEY = None

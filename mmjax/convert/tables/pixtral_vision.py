"""The Pixtral vision tower on its own (`pixtral`, transformers' `PixtralVisionModel`), and its
rules for the families that hold one (`mmjax.convert.tables.pixtral`, `mistral3`)."""

from mmjax.convert.rules import HEADS_MATRIX, MATRIX, SAME, Layout, Rule
from mmjax.convert.tables.common import prefixed


def pixtral_vision_rules() -> list[Rule]:
  """Relative to the tower's prefix (`model.vision_tower.` in a LLaVA) / `encoder/`."""
  layer = [
      *[Rule(f"attention.{n}_proj.weight", f"attn/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
      Rule("attention.o_proj.weight", "attn/o/kernel", MATRIX),
      Rule("attention_norm.weight", "attn_norm/scale"),
      Rule("ffn_norm.weight", "mlp_norm/scale"),
      *[Rule(f"feed_forward.{n}_proj.weight", f"mlp/{n}/kernel", MATRIX)
        for n in ("gate", "up", "down")],
  ]
  return [
      Rule("patch_conv.weight", "patch_embed/kernel", SAME),
      Rule("ln_pre.weight", "pre_norm/scale"),
      *prefixed(layer, "transformer.layers.{i}.", "layers/"),
  ]


def rules(config=None) -> list[Rule]:
  return prefixed(pixtral_vision_rules(), "", "encoder/")


LAYOUTS = (Layout("v5"),)
LM_HEAD_KEY = None

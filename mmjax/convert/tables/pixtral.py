"""Pixtral (transformers `llava` with a `pixtral` tower): the Pixtral tower's rules in LLaVA's
places. transformers v4 (and v5's `save_pretrained`) keep the tower flat under `vision_tower.`."""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed, projector_rules
from mmjax.convert.tables.pixtral_vision import pixtral_vision_rules


def rules(config=None) -> list[Rule]:
  return (
      prefixed(pixtral_vision_rules(), "model.vision_tower.", "encoder/")
      + prefixed(decoder_rules(), "model.language_model.", "decoder/")
      + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)]
      + prefixed(projector_rules(), "model.multi_modal_projector.", "connector/")
  )


LAYOUTS = (
    Layout("v5"),
    Layout("v4", (("model.language_model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head."),
                  ("model.vision_tower.", "vision_tower."),
                  ("model.multi_modal_projector.", "multi_modal_projector."))),
)

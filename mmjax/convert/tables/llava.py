"""LLaVA / LLaVA-1.5 (transformers `llava`): CLIP or SigLIP tower, MLP projector, Llama decoder."""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed, projector_rules, vision_rules


def rules(config=None) -> list[Rule]:
  return llava_rules(vision_rules())


def llava_rules(tower: list[Rule]) -> list[Rule]:
  """LLaVA's places for a vision tower's rules (relative to the tower), the Llama-family decoder
  and the MLP projector."""
  return (
      prefixed(tower, "model.vision_tower.", "encoder/")
      + prefixed(decoder_rules(), "model.language_model.", "decoder/")
      + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)]
      + prefixed(projector_rules(), "model.multi_modal_projector.", "connector/")
  )


LAYOUTS = (
    Layout("v5"),
    # transformers v4 (and what v5 itself writes by save_pretrained)
    Layout("v4", (("model.language_model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head."),
                  ("model.vision_tower.", "vision_tower.vision_model."),
                  ("model.multi_modal_projector.", "multi_modal_projector."))),
    Layout("v4_flat_vision", (("model.language_model.", "language_model.model."),
                              ("lm_head.", "language_model.lm_head."),
                              ("model.vision_tower.", "vision_tower."),
                              ("model.multi_modal_projector.", "multi_modal_projector."))),
    Layout("v5_nested_vision", (("model.vision_tower.", "model.vision_tower.vision_model."),)),
)

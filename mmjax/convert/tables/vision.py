"""CLIP / SigLIP vision towers on their own (`clip_vision_model`, `siglip_vision_model`)."""

from mmjax.convert.rules import Layout, Rule
from mmjax.convert.tables.common import prefixed, vision_rules


def rules(config=None) -> list[Rule]:
  return prefixed(vision_rules(), "", "encoder/")


LAYOUTS = (Layout("v5"), Layout("v4", (("", "vision_model."),)))
LM_HEAD_KEY = None

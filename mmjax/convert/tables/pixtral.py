"""Pixtral (transformers `llava` with a `pixtral` tower): the Pixtral tower's rules in LLaVA's
places. transformers v4 (and v5's `save_pretrained`) keep the tower flat under `vision_tower.`."""

from mmjax.convert.rules import Layout, Rule
from mmjax.convert.tables import llava
from mmjax.convert.tables.pixtral_vision import pixtral_vision_rules


def rules(config=None) -> list[Rule]:
  return llava.llava_rules(pixtral_vision_rules())


_FLAT_V4 = next(layout for layout in llava.LAYOUTS if layout.name == "v4_flat_vision")
LAYOUTS = (Layout("v5"), Layout("v4", _FLAT_V4.prefixes))

"""LLaVA-NeXT (transformers `llava_next`): LLaVA's table and the `image_newline` vector."""

from mmjax.convert.rules import Layout, Rule
from mmjax.convert.tables import llava

_NEWLINE = ("model.image_newline", "image_newline")  # v4 spellings keep it at the top level


def rules(config=None) -> list[Rule]:
  return llava.rules(config) + [Rule("model.image_newline", "image_newline")]


LAYOUTS = tuple(
    layout if layout.name.startswith("v5")
    else Layout(layout.name, (*layout.prefixes, _NEWLINE))
    for layout in llava.LAYOUTS)

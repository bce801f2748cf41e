"""Mistral3 (transformers `mistral3`): Pixtral's table, the projector's norm and patch merger
before its MLP."""

from mmjax.convert.rules import MATRIX, Rule
from mmjax.convert.tables import pixtral
from mmjax.convert.tables.common import prefixed, projector_rules


def rules(config=None) -> list[Rule]:
  merger = [Rule("norm.weight", "norm/scale"),
            Rule("patch_merger.merging_layer.weight", "merge/kernel", MATRIX),
            *prefixed(projector_rules(), "", "mlp/")]
  plain = prefixed(projector_rules(), "model.multi_modal_projector.", "connector/")
  return ([r for r in pixtral.rules(config) if r not in plain]
          + prefixed(merger, "model.multi_modal_projector.", "connector/"))


LAYOUTS = pixtral.LAYOUTS

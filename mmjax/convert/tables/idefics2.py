"""Conversion table of Idefics2 (`idefics2`, `Idefics2ForConditionalGeneration`).

transformers 4.x and 5.x save the same keys (`model.vision_model.`, `model.connector.`,
`model.text_model.`, `lm_head.`): one layout. The tower is SigLIP's (no pooling head: those
rules find no parameter and drop out); the connector's modality projection is a bias-free gated
MLP before the resampler.
"""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed, vision_rules
from mmjax.convert.tables.perceiver import idefics2_perceiver_rules


def connector_rules() -> list[Rule]:
  """`Idefics2Connector`, relative to `model.connector.` / `connector/`."""
  projection = [Rule(f"modality_projection.{n}_proj.weight", f"projection/{n}/kernel", MATRIX)
                for n in ("gate", "up", "down")]
  return projection + prefixed(idefics2_perceiver_rules(), "perceiver_resampler.", "resampler/")


def rules(config=None) -> list[Rule]:
  return (prefixed(vision_rules(), "model.vision_model.", "encoder/")
          + prefixed(connector_rules(), "model.connector.", "connector/")
          + prefixed(decoder_rules(), "model.text_model.", "decoder/")
          + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)])


LAYOUTS = (Layout("v5"),)

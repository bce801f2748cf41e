"""BLIP-2 / InstructBLIP with a Flan-T5 language model: BLIP-2's bridge keys and a
`T5ForConditionalGeneration` under `language_model.` (`shared.`, `encoder.`, `decoder.`, and
`lm_head.` when untied, as the Flan-T5 releases are)."""

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.blip2 import bridge_rules
from mmjax.convert.tables.common import BUFFER_IGNORES, prefixed
from mmjax.convert.tables.t5 import T5_IGNORES, t5_rules, with_head_tying

LM_HEAD_KEY = "language_model.lm_head.weight"


def rules(config) -> list[Rule]:
  return (bridge_rules(config) + prefixed(t5_rules(), "language_model.", "decoder/")
          + [Rule(LM_HEAD_KEY, "decoder/lm_head/kernel", MATRIX)])


def read_hf_dir(hf_dir: str, cfg: dict) -> dict:
  """The text config says whether the language model's head is tied (see `tables.t5`)."""
  return {**cfg, "text_config": with_head_tying(dict(cfg.get("text_config") or {}), hf_dir,
                                                LM_HEAD_KEY)}


IGNORES = BUFFER_IGNORES + T5_IGNORES
LAYOUTS = (Layout("v5"),)

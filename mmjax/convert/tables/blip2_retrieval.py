"""Conversion table of BLIP-2's retrieval model (`Blip2ForImageTextRetrieval`, `blip-2`).

Its saves hold `vision_model.`, `query_tokens`, `embeddings.` (the Q-Former's word and position
tables, beside `qformer.`, not inside it as InstructBLIP keeps them), `qformer.` (its input norm
is `qformer.layernorm`), `vision_projection.`, `text_projection.` and `itm_head.`. The stage-1
training heads (`head/itg`, `head/temp`) have no transformers counterpart: a model with them
(`stage1`) does not convert.
"""

import dataclasses

from mmjax.convert.rules import MATRIX, Layout, Rule
from mmjax.convert.tables.common import prefixed
from mmjax.convert.tables.qformer import QUERY_TOKENS, blip2_vision_rules, qformer_rules

LM_HEAD_KEY = None  # no language model


def rules(config) -> list[Rule]:
  if config.stage1:
    raise ValueError("a stage-1 BLIP-2 model's ITG head and temperature have no transformers "
                     "keys: Blip2ForImageTextRetrieval holds the rest (stage1=False)")
  # The layers' keys are the Q-Former's whatever its embeddings; the norm sits in `qformer.`.
  layers = qformer_rules(dataclasses.replace(config.qformer, text_vocab_size=0))
  heads = []
  for hf, ours in (("vision_projection", "vision_projection"),
                   ("text_projection", "text_projection"), ("itm_head", "itm")):
    heads += [Rule(f"{hf}.weight", f"head/{ours}/kernel", MATRIX),
              Rule(f"{hf}.bias", f"head/{ours}/bias")]
  return (prefixed(blip2_vision_rules(), "vision_model.", "encoder/")
          + [QUERY_TOKENS.prefixed("", "qformer/"),
             Rule("embeddings.word_embeddings.weight", "qformer/word_embed/embedding"),
             Rule("embeddings.position_embeddings.weight", "qformer/pos_embed/embedding")]
          + prefixed(layers, "qformer.", "qformer/") + heads)


LAYOUTS = (Layout("v5"),)

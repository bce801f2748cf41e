"""T5 / Flan-T5 (`t5`, `T5ForConditionalGeneration`), relative to the language model's prefix and
`decoder/` (the family's language model subtree).

transformers keeps each block as `layer.{0,1,2}` sub-layers (self-attention, cross-attention in
the decoder, feed-forward) and the relative position table in block 0 only; mmjax scans the
blocks and keeps the table beside the stack. `encoder.embed_tokens` / `decoder.embed_tokens`
are ties of `shared` that some saves carry (ignored); the LM head is saved only when untied.
"""

import os

from mmjax.convert.rules import HEADS_MATRIX, MATRIX, Layout, Rule
from mmjax.convert.sources import TensorSource
from mmjax.convert.tables.common import BUFFER_IGNORES, prefixed

LM_HEAD_KEY = "lm_head.weight"


def _attention(hf: str, ours: str) -> list[Rule]:
  return [*[Rule(f"{hf}.{n}.weight", f"{ours}/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
          Rule(f"{hf}.o.weight", f"{ours}/o/kernel", MATRIX)]


def _feed_forward(hf: str) -> list[Rule]:
  """Both kinds; the one the config does not build finds no parameter and drops out."""
  names = (("wi_0", "gate"), ("wi_1", "up"), ("wo", "down"), ("wi", "fc1"), ("wo", "fc2"))
  return [Rule(f"{hf}.DenseReluDense.{n}.weight", f"mlp/{ours}/kernel", MATRIX)
          for n, ours in names]


def _encoder_layer() -> list[Rule]:
  return (_attention("layer.0.SelfAttention", "attn")
          + [Rule("layer.0.layer_norm.weight", "attn_norm/scale"),
             Rule("layer.1.layer_norm.weight", "mlp_norm/scale")] + _feed_forward("layer.1"))


def _decoder_layer() -> list[Rule]:
  return (_attention("layer.0.SelfAttention", "attn")
          + _attention("layer.1.EncDecAttention", "cross")
          + [Rule("layer.0.layer_norm.weight", "attn_norm/scale"),
             Rule("layer.1.layer_norm.weight", "cross_norm/scale"),
             Rule("layer.2.layer_norm.weight", "mlp_norm/scale")] + _feed_forward("layer.2"))


def t5_rules() -> list[Rule]:
  """The language model (`mmjax.decoders.t5.T5`), without its LM head."""
  rules = [Rule("shared.weight", "embed/embedding")]
  for stack, layer in (("encoder", _encoder_layer()), ("decoder", _decoder_layer())):
    rules += [
        Rule(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             f"{stack}/relative_bias/embedding"),
        Rule(f"{stack}.final_layer_norm.weight", f"{stack}/norm/scale"),
        *prefixed(layer, f"{stack}.block.{{i}}.", f"{stack}/layers/"),
    ]
  return rules


def rules(config=None) -> list[Rule]:
  return prefixed(t5_rules(), "", "decoder/") + [
      Rule(LM_HEAD_KEY, "decoder/lm_head/kernel", MATRIX)]


# Ties of `shared` and the decoder's unused cross-attention table (transformers ignores it too).
T5_IGNORES = (r"(.*\.)?(encoder|decoder)\.embed_tokens\.weight",
              r"(.*\.)?decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight")
IGNORES = BUFFER_IGNORES + T5_IGNORES
LAYOUTS = (Layout("v5"),)


def with_head_tying(text_config: dict, hf_dir: str, lm_head_key: str) -> dict:
  """A T5 config dict that says what the weights hold: `tie_word_embeddings` false when the
  checkpoint saves its own LM head (transformers 5 writes true for every T5 and unties at load
  when the two differ), and `scale_decoder_outputs` as the config meant it."""
  scale = text_config.get("scale_decoder_outputs")
  if scale is None:
    scale = text_config.get("tie_word_embeddings", True) is not False
  if not os.path.isdir(hf_dir):
    return text_config
  untied = lm_head_key in TensorSource(hf_dir).keys()
  return {**text_config, "tie_word_embeddings": not untied, "scale_decoder_outputs": bool(scale)}


def read_hf_dir(hf_dir: str, cfg: dict) -> dict:
  return with_head_tying(cfg, hf_dir, LM_HEAD_KEY)

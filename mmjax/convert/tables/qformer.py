"""The Q-Former (`mmjax.connectors.qformer`), relative to transformers' `qformer.` / the
connector's parameters; BLIP-2's EVA vision tower, relative to `vision_model.`.

transformers keeps the Q-Former's layers flat (`encoder.layer.{i}`); mmjax scans groups of
`cross_attention_frequency` layers, so each slot of each segment reads its HF layers
(`segment_rules`). Query tokens are saved `[1, Q, D]`.
"""

from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, LeadingOnes, Rule
from mmjax.convert.tables.common import encoder_layer_rules, prefixed, segment_rules
from mmjax.decoders.layout import CROSS, SELF


def _attention(hf: str, ours: str) -> list[Rule]:
  """`Blip2QFormerAttention` (`attention` / `crossattention`) -> `_Attention`."""
  rules = []
  for hf_name, name in (("query", "q"), ("key", "k"), ("value", "v")):
    rules += [Rule(f"{hf}.attention.{hf_name}.weight", f"{ours}/{name}/kernel", HEADS_MATRIX),
              Rule(f"{hf}.attention.{hf_name}.bias", f"{ours}/{name}/bias", FLAT)]
  return rules + [
      Rule(f"{hf}.output.dense.weight", f"{ours}/o/kernel", MATRIX),
      Rule(f"{hf}.output.dense.bias", f"{ours}/o/bias"),
      Rule(f"{hf}.output.LayerNorm.weight", f"{ours}/norm/scale"),
      Rule(f"{hf}.output.LayerNorm.bias", f"{ours}/norm/bias"),
  ]


def _feed_forward(intermediate: str, output: str, ours: str) -> list[Rule]:
  return [
      Rule(f"{intermediate}.dense.weight", f"{ours}/mlp/fc1/kernel", MATRIX),
      Rule(f"{intermediate}.dense.bias", f"{ours}/mlp/fc1/bias"),
      Rule(f"{output}.dense.weight", f"{ours}/mlp/fc2/kernel", MATRIX),
      Rule(f"{output}.dense.bias", f"{ours}/mlp/fc2/bias"),
      Rule(f"{output}.LayerNorm.weight", f"{ours}/norm/scale"),
      Rule(f"{output}.LayerNorm.bias", f"{ours}/norm/bias"),
  ]


def _layer(cross: bool) -> list[Rule]:
  rules = (_attention("attention", "attn")
           + _feed_forward("intermediate_query", "output_query", "ffn_query")
           + _feed_forward("intermediate", "output", "ffn_text"))  # dropped without text_input
  return rules + (_attention("crossattention", "cross") if cross else [])


def qformer_rules(config) -> list[Rule]:
  """A `QFormerConfig`'s layers and input norm, relative to `qformer.` / the connector; the
  query tokens are the caller's (they sit beside `qformer.` in transformers). A Q-Former with
  text embeddings (InstructBLIP) keeps its input norm beside them, in `embeddings.`."""
  kinds = {SELF: ("encoder.layer.{i}.", _layer(False)),
           CROSS: ("encoder.layer.{i}.", _layer(True))}
  norm = "embeddings.layernorm" if config.text_vocab_size else "layernorm"
  embeddings = [Rule("embeddings.word_embeddings.weight", "word_embed/embedding"),
                Rule("embeddings.position_embeddings.weight", "pos_embed/embedding")]
  return [Rule(f"{norm}.weight", "embed_norm/scale"), Rule(f"{norm}.bias", "embed_norm/bias"),
          *(embeddings if config.text_vocab_size else []),
          *segment_rules(config.plan, kinds)]


QUERY_TOKENS = Rule("query_tokens", "query_tokens", LeadingOnes(1))


def blip2_vision_rules() -> list[Rule]:
  """`Blip2VisionModel` (EVA): the fused `qkv` split into q, k and v (the k bias is the zero
  middle third of the fused bias), `projection` the output Linear."""
  layer = [r for r in encoder_layer_rules() if not r.hf.startswith("self_attn.")]
  for index, name in enumerate("qkv"):
    layer += [Rule("self_attn.qkv.weight", f"attn/{name}/kernel", HEADS_MATRIX, (index, 3)),
              Rule("self_attn.qkv.bias", f"attn/{name}/bias", FLAT, (index, 3))]
  layer += [Rule("self_attn.projection.weight", "attn/o/kernel", MATRIX),
            Rule("self_attn.projection.bias", "attn/o/bias")]
  return [
      Rule("embeddings.patch_embedding.weight", "patch_embed/kernel"),
      Rule("embeddings.patch_embedding.bias", "patch_embed/bias"),
      Rule("embeddings.class_embedding", "class_embed", LeadingOnes(2)),
      Rule("embeddings.position_embedding", "pos_embed", LeadingOnes(1)),
      Rule("post_layernorm.weight", "post_norm/scale"),
      Rule("post_layernorm.bias", "post_norm/bias"),
      *prefixed(layer, "encoder.layers.{i}.", "layers/"),
  ]

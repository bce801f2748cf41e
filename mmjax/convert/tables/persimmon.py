"""Persimmon decoders (alone, and as Fuyu's language model), relative to the decoder's prefix.

Persimmon fuses q, k and v in one `query_key_value` Linear whose output is laid out per head,
`[N, 3, H]` (transformers' `_split_heads` views it as `[B, T, N, 3, H]`): each of mmjax's q/k/v
kernels is the `[:, index]` chunk of it (`Rule.chunk` with `groups` = N).
"""

from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, Rule
from mmjax.convert.tables.common import prefixed


def _layer_rules(num_heads: int) -> list[Rule]:
  fused = "self_attn.query_key_value"
  qkv = []
  for index, name in enumerate("qkv"):
    chunk = (index, 3, num_heads)
    qkv += [Rule(f"{fused}.weight", f"attn/{name}/kernel", HEADS_MATRIX, chunk),
            Rule(f"{fused}.bias", f"attn/{name}/bias", FLAT, chunk)]
  norms = [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm"),
           ("self_attn.q_layernorm", "attn/q_norm"), ("self_attn.k_layernorm", "attn/k_norm")]
  return qkv + [
      Rule("self_attn.dense.weight", "attn/o/kernel", MATRIX),
      Rule("self_attn.dense.bias", "attn/o/bias"),
      Rule("mlp.dense_h_to_4h.weight", "mlp/fc1/kernel", MATRIX),
      Rule("mlp.dense_h_to_4h.bias", "mlp/fc1/bias"),
      Rule("mlp.dense_4h_to_h.weight", "mlp/fc2/kernel", MATRIX),
      Rule("mlp.dense_4h_to_h.bias", "mlp/fc2/bias"),
      *[Rule(f"{hf}.weight", f"{ours}/scale") for hf, ours in norms],
      *[Rule(f"{hf}.bias", f"{ours}/bias") for hf, ours in norms],
  ]


def persimmon_decoder_rules(decoder) -> list[Rule]:
  """A Persimmon decoder (`DecoderConfig` `decoder`), relative to `model.` (or Fuyu's
  `model.language_model.`); the LM head is the caller's."""
  return [
      Rule("embed_tokens.weight", "embed/embedding"),
      Rule("final_layernorm.weight", "norm/scale"),
      Rule("final_layernorm.bias", "norm/bias"),
      *prefixed(_layer_rules(decoder.num_heads), "layers.{i}.", "layers/"),
  ]

"""OPT decoders (alone, and as BLIP-2's language model), relative to the decoder's `model.decoder.`
prefix; the LM head is the caller's.

`embed_positions` is saved with transformers' 2 offset rows first (`max_position_embeddings + 2`),
as mmjax keeps it; `project_in` / `project_out` exist only when `word_embed_proj_dim` differs from
`hidden_size` (the rules then find no parameter and drop out).
"""

from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, Rule
from mmjax.convert.tables.common import prefixed


def _layer_rules() -> list[Rule]:
  attn = []
  for name in "qkv":
    attn += [Rule(f"self_attn.{name}_proj.weight", f"attn/{name}/kernel", HEADS_MATRIX),
             Rule(f"self_attn.{name}_proj.bias", f"attn/{name}/bias", FLAT)]
  norms = [("self_attn_layer_norm", "attn_norm"), ("final_layer_norm", "mlp_norm")]
  return attn + [
      Rule("self_attn.out_proj.weight", "attn/o/kernel", MATRIX),
      Rule("self_attn.out_proj.bias", "attn/o/bias"),
      Rule("fc1.weight", "mlp/fc1/kernel", MATRIX), Rule("fc1.bias", "mlp/fc1/bias"),
      Rule("fc2.weight", "mlp/fc2/kernel", MATRIX), Rule("fc2.bias", "mlp/fc2/bias"),
      *[Rule(f"{hf}.weight", f"{ours}/scale") for hf, ours in norms],
      *[Rule(f"{hf}.bias", f"{ours}/bias") for hf, ours in norms],
  ]


def opt_decoder_rules() -> list[Rule]:
  return [
      Rule("embed_tokens.weight", "embed/embedding"),
      Rule("embed_positions.weight", "pos_embed/embedding"),
      Rule("project_in.weight", "project_in/kernel", MATRIX),
      Rule("project_out.weight", "project_out/kernel", MATRIX),
      Rule("final_layer_norm.weight", "norm/scale"),
      Rule("final_layer_norm.bias", "norm/bias"),
      *prefixed(_layer_rules(), "layers.{i}.", "layers/"),
  ]

"""Conversion table for Llama 3.2 Vision's tiled vision tower (`mmjax.encoders.mllama_vit`).

Keys are relative to transformers v5's `model.vision_model.` (v4 saves: `vision_model.`), paths
to the tower's parameter root. The aspect-ratio embedding tables are flat in HF
(`[R+1, T*D]`, `[R+1, T*S*D]`) and `[R+1, T, D]`, `[R+1, T, S, D]` here: `MATRIX` is the reshape
that keeps the leading axis.
"""

from mmjax.convert.rules import HEADS_MATRIX, MATRIX, Rule
from mmjax.convert.tables.common import prefixed


def _encoder_layer(gated: bool) -> list[Rule]:
  rules = [
      *[Rule(f"self_attn.{n}_proj.weight", f"attn/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
      Rule("self_attn.o_proj.weight", "attn/o/kernel", MATRIX),
      Rule("input_layernorm.weight", "norm1/scale"), Rule("input_layernorm.bias", "norm1/bias"),
      Rule("post_attention_layernorm.weight", "norm2/scale"),
      Rule("post_attention_layernorm.bias", "norm2/bias"),
      Rule("mlp.fc1.weight", "mlp/fc1/kernel", MATRIX), Rule("mlp.fc1.bias", "mlp/fc1/bias"),
      Rule("mlp.fc2.weight", "mlp/fc2/kernel", MATRIX), Rule("mlp.fc2.bias", "mlp/fc2/bias"),
  ]
  if gated:
    rules += [Rule("gate_attn", "gate_attn"), Rule("gate_ffn", "gate_ffn")]
  return rules


def mllama_vision_rules() -> list[Rule]:
  """`MllamaVisionModel` keys -> `MllamaVisionTransformer` parameter paths."""
  return [
      Rule("patch_embedding.weight", "patch_embed/kernel"),  # [D, C, P, P] as torch's Conv2d
      Rule("class_embedding", "class_embed"),
      Rule("pre_tile_positional_embedding.embedding.weight", "pre_tile_embed/embedding", MATRIX),
      Rule("pre_tile_positional_embedding.gate", "pre_tile_embed/gate"),
      Rule("gated_positional_embedding.embedding", "pos_embed/embedding"),
      Rule("gated_positional_embedding.gate", "pos_embed/gate"),
      Rule("gated_positional_embedding.tile_embedding.weight", "pos_embed/tile_embedding", MATRIX),
      Rule("layernorm_pre.weight", "pre_norm/scale"), Rule("layernorm_pre.bias", "pre_norm/bias"),
      Rule("layernorm_post.weight", "post_norm/scale"),
      Rule("layernorm_post.bias", "post_norm/bias"),
      Rule("post_tile_positional_embedding.embedding.weight", "post_tile_embed/embedding", MATRIX),
      Rule("post_tile_positional_embedding.gate", "post_tile_embed/gate"),
      *prefixed(_encoder_layer(gated=False), "transformer.layers.{i}.", "layers/"),
      *prefixed(_encoder_layer(gated=True), "global_transformer.layers.{i}.", "global_layers/"),
  ]

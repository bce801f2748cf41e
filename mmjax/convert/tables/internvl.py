"""Conversion table of transformers' native InternVL (`internvl`).

Canonical keys: transformers v5 module names `model.vision_tower.*`, `model.language_model.*`,
`model.multi_modal_projector.*`, `lm_head.*`; `save_pretrained` and the `-hf` hub checkpoints write
the `v4` spelling. The original release has its own table (`internvl_chat`).
"""


from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, LeadingOnes, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed


def intern_vit_rules() -> list[Rule]:
  """transformers' `InternVLVisionModel`, relative to `model.vision_tower.` / `encoder/`."""
  layer = [
      *[Rule(f"attention.{n}_proj.weight", f"attn/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
      *[Rule(f"attention.{n}_proj.bias", f"attn/{n}/bias", FLAT) for n in "qkv"],
      Rule("attention.q_norm.weight", "attn/q_norm/scale"),
      Rule("attention.k_norm.weight", "attn/k_norm/scale"),
      Rule("attention.projection_layer.weight", "attn/o/kernel", MATRIX),
      Rule("attention.projection_layer.bias", "attn/o/bias"),
      Rule("lambda_1", "ls1"), Rule("lambda_2", "ls2"),
      Rule("layernorm_before.weight", "norm1/scale"), Rule("layernorm_before.bias", "norm1/bias"),
      Rule("layernorm_after.weight", "norm2/scale"), Rule("layernorm_after.bias", "norm2/bias"),
      Rule("mlp.fc1.weight", "mlp/fc1/kernel", MATRIX), Rule("mlp.fc1.bias", "mlp/fc1/bias"),
      Rule("mlp.fc2.weight", "mlp/fc2/kernel", MATRIX), Rule("mlp.fc2.bias", "mlp/fc2/bias"),
  ]
  return [
      Rule("embeddings.cls_token", "class_embed", LeadingOnes(2)),
      Rule("embeddings.patch_embeddings.projection.weight", "patch_embed/kernel"),
      Rule("embeddings.patch_embeddings.projection.bias", "patch_embed/bias"),
      Rule("embeddings.position_embeddings", "pos_embed", LeadingOnes(1)),
      Rule("layernorm.weight", "post_norm/scale"), Rule("layernorm.bias", "post_norm/bias"),
      *prefixed(layer, "encoder.layer.{i}.", "layers/"),
  ]


def projector_rules() -> list[Rule]:
  return [
      Rule("layer_norm.weight", "norm/scale"), Rule("layer_norm.bias", "norm/bias"),
      Rule("linear_1.weight", "linear_1/kernel", MATRIX), Rule("linear_1.bias", "linear_1/bias"),
      Rule("linear_2.weight", "linear_2/kernel", MATRIX), Rule("linear_2.bias", "linear_2/bias"),
  ]


def rules(config=None) -> list[Rule]:
  return (prefixed(intern_vit_rules(), "model.vision_tower.", "encoder/")
          + prefixed(projector_rules(), "model.multi_modal_projector.", "connector/")
          + prefixed(decoder_rules(), "model.language_model.", "decoder/")
          + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)])


LAYOUTS = (
    Layout("v4", (("model.language_model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head."),
                  ("model.vision_tower.", "vision_tower."),
                  ("model.multi_modal_projector.", "multi_modal_projector."))),
    Layout("v5"),
)

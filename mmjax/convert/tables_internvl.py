"""Conversion tables for InternVL: transformers' native `internvl` and the original release.

Native (canonical: transformers v5 module names `model.vision_tower.*`, `model.language_model.*`,
`model.multi_modal_projector.*`, `lm_head.*`; `save_pretrained` and the `-hf` hub checkpoints write
the `v4` spelling). Original (`InternVLChatModel`, trust_remote_code): `vision_model.*` with fused
`attn.qkv`, layer scale `ls1`/`ls2`, the connector as `mlp1.{0,1,3}`, and `language_model.*`
holding a Qwen2 / Llama / InternLM2 causal LM. InternLM2 fuses q, k, v into `wqkv`, grouped per KV
head (the group's query heads, then its key, then its value), which `GroupedQKV` de-interleaves.
"""

import dataclasses

import numpy as np

from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, Layout, Rule, Transform
from mmjax.convert.tables import _layer, decoder_rules


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
      *_layer(layer, "encoder.layer.{i}.", "layers/"),
  ]


def projector_rules() -> list[Rule]:
  return [
      Rule("layer_norm.weight", "norm/scale"), Rule("layer_norm.bias", "norm/bias"),
      Rule("linear_1.weight", "linear_1/kernel", MATRIX), Rule("linear_1.bias", "linear_1/bias"),
      Rule("linear_2.weight", "linear_2/kernel", MATRIX), Rule("linear_2.bias", "linear_2/bias"),
  ]


def internvl_rules() -> list[Rule]:
  return (_layer(intern_vit_rules(), "model.vision_tower.", "encoder/")
          + _layer(projector_rules(), "model.multi_modal_projector.", "connector/")
          + _layer(decoder_rules(), "model.language_model.", "decoder/")
          + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)])


INTERNVL_LAYOUTS = (
    Layout("v4", (("model.language_model.", "language_model.model."),
                  ("lm_head.", "language_model.lm_head."),
                  ("model.vision_tower.", "vision_tower."),
                  ("model.multi_modal_projector.", "multi_modal_projector."))),
    Layout("v5"),
)


@dataclasses.dataclass(frozen=True)
class LeadingOnes(Transform):
  """A parameter saved with `count` leading axes of 1 (`[1, 1, D]` <-> `[D]`)."""

  count: int = 1
  reshape_only = True

  def hf_shape(self, target):
    return (1,) * self.count + tuple(target)

  def to_params(self, a, target):
    return a.reshape(target)

  def to_hf(self, p):
    return p.reshape(self.hf_shape(p.shape))


@dataclasses.dataclass(frozen=True)
class GroupedQKV(Transform):
  """One of q / k / v out of InternLM2's `wqkv [K*(G+2)*H, D]` (or its bias `[K*(G+2)*H]`).

  Rows are grouped per KV head k: its G query heads (global heads k*G .. k*G+G-1), its key, its
  value. `part` is 'q' (target `[K*G, H, D]`), 'k' or 'v' (target `[K, H, D]`); biases drop D.
  """

  part: str
  groups: int  # G = query heads per KV head
  bias: bool = False

  def _kv_heads(self, target) -> int:
    return target[0] // self.groups if self.part == "q" else target[0]

  def hf_shape(self, target):
    k, h = self._kv_heads(target), target[1]
    rows = k * (self.groups + 2) * h
    return (rows,) if self.bias else (rows, *target[2:])

  def to_params(self, a, target):
    k, h = self._kv_heads(target), target[1]
    grouped = a.reshape(k, self.groups + 2, h, *a.shape[1:])  # [K, G+2, H, (D)]
    index = {"q": slice(0, self.groups), "k": self.groups, "v": self.groups + 1}[self.part]
    return np.ascontiguousarray(grouped[:, index]).reshape(target)

  def to_hf(self, p):
    raise NotImplementedError("export writes transformers' native layout, not InternLM2's wqkv")


def _original_vit_rules() -> list[Rule]:
  """`InternVisionModel`, relative to `vision_model.` / `encoder/`."""
  layer = [
      Rule("attn.proj.weight", "attn/o/kernel", MATRIX), Rule("attn.proj.bias", "attn/o/bias"),
      Rule("attn.q_norm.weight", "attn/q_norm/scale"),
      Rule("attn.k_norm.weight", "attn/k_norm/scale"),
      Rule("ls1", "ls1"), Rule("ls2", "ls2"),
      Rule("norm1.weight", "norm1/scale"), Rule("norm1.bias", "norm1/bias"),
      Rule("norm2.weight", "norm2/scale"), Rule("norm2.bias", "norm2/bias"),
      Rule("mlp.fc1.weight", "mlp/fc1/kernel", MATRIX), Rule("mlp.fc1.bias", "mlp/fc1/bias"),
      Rule("mlp.fc2.weight", "mlp/fc2/kernel", MATRIX), Rule("mlp.fc2.bias", "mlp/fc2/bias"),
  ]
  for index, name in enumerate("qkv"):
    layer.append(Rule("attn.qkv.weight", f"attn/{name}/kernel", HEADS_MATRIX, (index, 3)))
    layer.append(Rule("attn.qkv.bias", f"attn/{name}/bias", FLAT, (index, 3)))
  return [
      Rule("embeddings.class_embedding", "class_embed", LeadingOnes(2)),
      Rule("embeddings.patch_embedding.weight", "patch_embed/kernel"),
      Rule("embeddings.patch_embedding.bias", "patch_embed/bias"),
      Rule("embeddings.position_embedding", "pos_embed", LeadingOnes(1)),
      *_layer(layer, "encoder.layers.{i}.", "layers/"),
  ]


def _internlm2_rules(groups: int) -> list[Rule]:
  """`InternLM2ForCausalLM` onto the Llama decoder, relative to `language_model.`."""
  layer = [
      Rule("attention.wo.weight", "attn/o/kernel", MATRIX), Rule("attention.wo.bias", "attn/o/bias"),
      Rule("attention_norm.weight", "attn_norm/scale"), Rule("ffn_norm.weight", "mlp_norm/scale"),
      Rule("feed_forward.w1.weight", "mlp/gate/kernel", MATRIX),
      Rule("feed_forward.w3.weight", "mlp/up/kernel", MATRIX),
      Rule("feed_forward.w2.weight", "mlp/down/kernel", MATRIX),
  ]
  for name in "qkv":
    layer.append(Rule("attention.wqkv.weight", f"attn/{name}/kernel", GroupedQKV(name, groups)))
    layer.append(Rule("attention.wqkv.bias", f"attn/{name}/bias", GroupedQKV(name, groups, True)))
  return [
      Rule("model.tok_embeddings.weight", "decoder/embed/embedding"),
      Rule("model.norm.weight", "decoder/norm/scale"),
      *_layer(layer, "model.layers.{i}.", "decoder/layers/"),
      Rule("output.weight", "decoder/lm_head/kernel", MATRIX),
  ]


def original_rules(config) -> list[Rule]:
  """Rules for an original-release checkpoint; the decoder's table depends on its kind."""
  if config.original_decoder == "internlm2":
    llm = _internlm2_rules(config.decoder.num_heads // config.decoder.num_kv_heads)
  else:
    llm = (_layer(decoder_rules(), "model.", "decoder/")
           + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)])
  connector = [
      Rule("mlp1.0.weight", "norm/scale"), Rule("mlp1.0.bias", "norm/bias"),
      Rule("mlp1.1.weight", "linear_1/kernel", MATRIX), Rule("mlp1.1.bias", "linear_1/bias"),
      Rule("mlp1.3.weight", "linear_2/kernel", MATRIX), Rule("mlp1.3.bias", "linear_2/bias"),
  ]
  return (_layer(_original_vit_rules(), "vision_model.", "encoder/")
          + _layer(connector, "", "connector/")
          + _layer(llm, "language_model.", ""))


ORIGINAL_LAYOUTS = (Layout("original"),)

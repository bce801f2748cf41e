"""Conversion rules shared by the families' tables: vision towers, Llama-family decoders,
projectors. Canonical HF keys <-> mmjax parameter paths, one small table per part.

Canonical keys follow transformers v5's naming; `Layout`s say how older or differently nested
saves spell the same keys. Rules whose parameter does not exist in a given model (a class token
in SigLIP, biases a config switches off) are dropped by the converter, so one table serves every
variant and the strict checks catch what is left over.
"""

import dataclasses
from typing import Callable, Mapping

from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, SAME, Layout, Rule

_ATTN = [
    Rule("self_attn.q_proj.weight", "attn/q/kernel", HEADS_MATRIX),
    Rule("self_attn.k_proj.weight", "attn/k/kernel", HEADS_MATRIX),
    Rule("self_attn.v_proj.weight", "attn/v/kernel", HEADS_MATRIX),
    Rule("self_attn.q_proj.bias", "attn/q/bias", FLAT),
    Rule("self_attn.k_proj.bias", "attn/k/bias", FLAT),
    Rule("self_attn.v_proj.bias", "attn/v/bias", FLAT),
]


def prefixed(rules: list[Rule], hf_prefix: str, path_prefix: str) -> list[Rule]:
  return [r.prefixed(hf_prefix, path_prefix) for r in rules]


def encoder_layer_rules() -> list[Rule]:
  """One CLIP / SigLIP encoder layer (vision or text tower: `mmjax.encoders.vit.EncoderBlock`),
  relative to `encoder.layers.{i}.` / the layer's parameters."""
  return _ATTN + [
      Rule("self_attn.out_proj.weight", "attn/o/kernel", MATRIX),
      Rule("self_attn.out_proj.bias", "attn/o/bias", SAME),
      Rule("layer_norm1.weight", "norm1/scale"), Rule("layer_norm1.bias", "norm1/bias"),
      Rule("layer_norm2.weight", "norm2/scale"), Rule("layer_norm2.bias", "norm2/bias"),
      Rule("mlp.fc1.weight", "mlp/fc1/kernel", MATRIX), Rule("mlp.fc1.bias", "mlp/fc1/bias"),
      Rule("mlp.fc2.weight", "mlp/fc2/kernel", MATRIX), Rule("mlp.fc2.bias", "mlp/fc2/bias"),
  ]


def vision_rules() -> list[Rule]:
  """CLIP / SigLIP vision towers (canonical: transformers v5 `CLIPVisionModel` keys)."""
  head = [
      Rule("head.probe", "head/probe"),
      Rule("head.attention.out_proj.weight", "head/o/kernel", MATRIX),
      Rule("head.attention.out_proj.bias", "head/o/bias"),
      Rule("head.layernorm.weight", "head/norm/scale"), Rule("head.layernorm.bias", "head/norm/bias"),
      Rule("head.mlp.fc1.weight", "head/mlp/fc1/kernel", MATRIX),
      Rule("head.mlp.fc1.bias", "head/mlp/fc1/bias"),
      Rule("head.mlp.fc2.weight", "head/mlp/fc2/kernel", MATRIX),
      Rule("head.mlp.fc2.bias", "head/mlp/fc2/bias"),
  ]
  # torch's MultiheadAttention packs q, k, v into one in_proj tensor.
  for index, name in enumerate("qkv"):
    head.append(Rule("head.attention.in_proj_weight", f"head/{name}/kernel", HEADS_MATRIX,
                     (index, 3)))
    head.append(Rule("head.attention.in_proj_bias", f"head/{name}/bias", FLAT, (index, 3)))
  return [
      Rule("embeddings.patch_embedding.weight", "patch_embed/kernel", SAME),
      Rule("embeddings.patch_embedding.bias", "patch_embed/bias"),
      Rule("embeddings.class_embedding", "class_embed"),
      Rule("embeddings.position_embedding.weight", "pos_embed"),
      Rule("pre_layrnorm.weight", "pre_norm/scale"), Rule("pre_layrnorm.bias", "pre_norm/bias"),
      Rule("post_layernorm.weight", "post_norm/scale"),
      Rule("post_layernorm.bias", "post_norm/bias"),
      *prefixed(encoder_layer_rules(), "encoder.layers.{i}.", "layers/"),
      *head,
  ]


def decoder_layer_rules() -> list[Rule]:
  """One Llama-family decoder layer, relative to `layers.{i}.` / the layer's parameters."""
  return _ATTN + [
      Rule("self_attn.o_proj.weight", "attn/o/kernel", MATRIX),
      Rule("self_attn.o_proj.bias", "attn/o/bias"),
      Rule("self_attn.q_norm.weight", "attn/q_norm/scale"),
      Rule("self_attn.k_norm.weight", "attn/k_norm/scale"),
      Rule("input_layernorm.weight", "attn_norm/scale"),
      Rule("post_attention_layernorm.weight", "mlp_norm/scale"),
      *[Rule(f"mlp.{n}_proj.weight", f"mlp/{n}/kernel", MATRIX) for n in ("gate", "up", "down")],
      *[Rule(f"mlp.{n}_proj.bias", f"mlp/{n}/bias") for n in ("gate", "up", "down")],
  ]


def segment_rules(plan, kinds: Mapping[str, tuple[str, list[Rule]]],
                  hf_index: Callable[[int], int] = lambda i: i) -> list[Rule]:
  """A decoder of several layer kinds (`mmjax.decoders.layout`): each slot of each segment
  takes its kind's `(HF key prefix with '{i}', layer rules)` from `kinds`, stacked over the
  segment's repeats; `hf_index` maps a layer's index in the merged stack to its `{i}`."""
  rules = []
  for segment in plan:
    for j, (kind, slot) in enumerate(zip(segment.kinds, segment.slots)):
      layers = tuple(hf_index(segment.hf_index(r, j)) for r in range(segment.repeats))
      base = f"{segment.name}/{slot}/" if slot else f"{segment.name}/"
      prefix, layer = kinds[kind]
      rules += [dataclasses.replace(r, layers=layers) for r in prefixed(layer, prefix, base)]
  return rules


def decoder_rules(lm_head: str = "lm_head.weight") -> list[Rule]:
  """Llama-family decoders, relative to the decoder's `model.` prefix; `lm_head` is absolute."""
  return [
      Rule("embed_tokens.weight", "embed/embedding"),
      Rule("norm.weight", "norm/scale"),
      *prefixed(decoder_layer_rules(), "layers.{i}.", "layers/"),
  ]


def projector_rules() -> list[Rule]:
  return [
      Rule("linear_1.weight", "linear_1/kernel", MATRIX), Rule("linear_1.bias", "linear_1/bias"),
      Rule("linear_2.weight", "linear_2/kernel", MATRIX), Rule("linear_2.bias", "linear_2/bias"),
  ]


# Buffers some saves carry that are recomputed, never learned.
BUFFER_IGNORES = (r".*rotary_emb\.inv_freq$", r".*\.position_ids$")

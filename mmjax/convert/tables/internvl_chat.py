"""Conversion table of InternVL's original release (`internvl_chat`, `InternVLChatModel`).

`vision_model.*` with fused `attn.qkv`, layer scale `ls1`/`ls2`, the connector as `mlp1.{0,1,3}`,
and `language_model.*` holding a Qwen2 / Llama / InternLM2 causal LM. InternLM2 fuses q, k, v into
`wqkv`, grouped per KV head (the group's query heads, then its key, then its value), which
`GroupedQKV` de-interleaves. Checkpoints are stored as the native `internvl` family, so export
writes transformers' layout. The `<IMG_CONTEXT>` id is not in config.json: `read_hf_dir` reads it
from the tokenizer files beside it.
"""

import dataclasses
import json
import os

import numpy as np

from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, Layout, LeadingOnes, Rule, Transform
from mmjax.convert.tables.common import decoder_rules, prefixed
from mmjax.models.internvl import IMAGE_CONTEXT_TOKEN

STORED_AS = "internvl"
LAYOUTS = (Layout("original"),)


def native_hf_config(config) -> dict:
  return config.to_hf()


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
      *prefixed(layer, "encoder.layers.{i}.", "layers/"),
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
      *prefixed(layer, "model.layers.{i}.", "decoder/layers/"),
      Rule("output.weight", "decoder/lm_head/kernel", MATRIX),
  ]


def rules(config) -> list[Rule]:
  """Rules for an original-release checkpoint; the decoder's table depends on its kind."""
  if config.original_decoder == "internlm2":
    llm = _internlm2_rules(config.decoder.num_heads // config.decoder.num_kv_heads)
  else:
    llm = (prefixed(decoder_rules(), "model.", "decoder/")
           + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)])
  connector = [
      Rule("mlp1.0.weight", "norm/scale"), Rule("mlp1.0.bias", "norm/bias"),
      Rule("mlp1.1.weight", "linear_1/kernel", MATRIX), Rule("mlp1.1.bias", "linear_1/bias"),
      Rule("mlp1.3.weight", "linear_2/kernel", MATRIX), Rule("mlp1.3.bias", "linear_2/bias"),
  ]
  return (prefixed(_original_vit_rules(), "vision_model.", "encoder/")
          + prefixed(connector, "", "connector/")
          + prefixed(llm, "language_model.", ""))


def read_hf_dir(hf_dir: str, cfg: dict) -> dict:
  """Adds `image_token_id` to an original InternVL config from the tokenizer files beside it."""
  if "image_token_id" in cfg:
    return cfg
  for name in ("tokenizer_config.json", "tokenizer.json", "added_tokens.json"):
    path = os.path.join(hf_dir, name)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      data = json.load(f)
    if name == "added_tokens.json":
      found = data.get(IMAGE_CONTEXT_TOKEN)
    elif name == "tokenizer.json":
      found = next((t["id"] for t in data.get("added_tokens", [])
                    if t.get("content") == IMAGE_CONTEXT_TOKEN), None)
    else:
      found = next((int(i) for i, t in data.get("added_tokens_decoder", {}).items()
                    if t.get("content") == IMAGE_CONTEXT_TOKEN), None)
    if found is not None:
      return {**cfg, "image_token_id": int(found)}
  return cfg

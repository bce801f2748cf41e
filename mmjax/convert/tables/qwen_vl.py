"""Conversion tables for Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

Canonical keys are transformers v5's module names (`model.visual.*`, `model.language_model.*`,
`lm_head.*`). transformers (v4, and v5's `save_pretrained` for Qwen2-VL / Qwen2.5-VL) and the hub
checkpoints of those two write `visual.*` and `model.*` instead: the `v4` layout. Qwen3-VL saves
the canonical spelling. The fused `qkv` projection splits into q, k, v by thirds.
"""

from mmjax.convert.rules import FLAT, HEADS_MATRIX, MATRIX, SAME, Layout, Rule
from mmjax.convert.tables.common import decoder_rules, prefixed

_MLP_NAMES = {  # HF block MLP name -> mmjax name
    "qwen2_vl": {"fc1": "fc1", "fc2": "fc2"},
    "qwen2_5_vl": {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"},
    "qwen3_vl": {"linear_fc1": "fc1", "linear_fc2": "fc2"},
}


def _merger(hf_norm: str, hf_fc1: str, hf_fc2: str) -> list[Rule]:
  return [
      Rule(f"{hf_norm}.weight", "norm/scale"), Rule(f"{hf_norm}.bias", "norm/bias"),
      Rule(f"{hf_fc1}.weight", "fc1/kernel", MATRIX), Rule(f"{hf_fc1}.bias", "fc1/bias"),
      Rule(f"{hf_fc2}.weight", "fc2/kernel", MATRIX), Rule(f"{hf_fc2}.bias", "fc2/bias"),
  ]


def qwen_vision_rules(kind: str) -> list[Rule]:
  """The packed ViT and its merger(s), relative to `model.visual.` / `encoder/`."""
  block = [
      Rule("norm1.weight", "norm1/scale"), Rule("norm1.bias", "norm1/bias"),
      Rule("norm2.weight", "norm2/scale"), Rule("norm2.bias", "norm2/bias"),
      Rule("attn.proj.weight", "attn/o/kernel", MATRIX), Rule("attn.proj.bias", "attn/o/bias"),
  ]
  for index, name in enumerate("qkv"):
    block.append(Rule("attn.qkv.weight", f"attn/{name}/kernel", HEADS_MATRIX, (index, 3)))
    block.append(Rule("attn.qkv.bias", f"attn/{name}/bias", FLAT, (index, 3)))
  for hf, ours in _MLP_NAMES[kind].items():
    block.append(Rule(f"mlp.{hf}.weight", f"mlp/{ours}/kernel", MATRIX))
    block.append(Rule(f"mlp.{hf}.bias", f"mlp/{ours}/bias"))
  rules = [
      Rule("patch_embed.proj.weight", "patch_embed/kernel", SAME),
      Rule("patch_embed.proj.bias", "patch_embed/bias"),
      *prefixed(block, "blocks.{i}.", "layers/"),
  ]
  if kind == "qwen3_vl":
    rules += [Rule("pos_embed.weight", "pos_embed"),
              *prefixed(_merger("norm", "linear_fc1", "linear_fc2"), "merger.", "merger/"),
              *prefixed(_merger("norm", "linear_fc1", "linear_fc2"), "deepstack_merger_list.{i}.",
                      "deepstack/mergers/")]
  else:
    rules += prefixed(_merger("ln_q", "mlp.0", "mlp.2"), "merger.", "merger/")
  return rules


def rules(config) -> list[Rule]:
  kind = config.model_type
  return (prefixed(qwen_vision_rules(kind), "model.visual.", "encoder/")
          + prefixed(decoder_rules(), "model.language_model.", "decoder/")
          + [Rule("lm_head.weight", "decoder/lm_head/kernel", MATRIX)])


LAYOUTS = (
    Layout("v5"),
    Layout("v4", (("model.language_model.", "model."), ("model.visual.", "visual."))),
)

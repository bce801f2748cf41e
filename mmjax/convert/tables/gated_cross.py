"""Conversion rules of Flamingo's gated cross-attention layer (`mmjax.decoders.gated_cross`), as
transformers' IDEFICS names it (`IdeficsGatedCrossAttentionLayer`), relative to one layer's key
prefix (`model.gated_cross_attn_layers.{i}.`) and its parameters."""

from mmjax.convert.rules import HEADS_MATRIX, MATRIX, Rule, Transform


class GateShape(Transform):
  """A tanh gate: HF keeps a scalar as `[1]` and a per-channel gate as `[1, 1, D]`; mmjax
  `[1]` and `[D]`."""

  reshape_only = True

  def hf_shape(self, target):
    return (1,) if tuple(target) == (1,) else (1, 1, *target)

  def to_params(self, a, target):
    return a.reshape(target)

  def to_hf(self, p):
    return p.reshape(self.hf_shape(p.shape))


GATE = GateShape()


def gated_cross_layer_rules() -> list[Rule]:
  return [
      Rule("alpha_cross_attn", "attn_gate", GATE), Rule("alpha_dense", "mlp_gate", GATE),
      Rule("input_layernorm.weight", "attn_norm/scale"),
      Rule("post_attention_layernorm.weight", "mlp_norm/scale"),
      *[Rule(f"cross_attn.{n}_proj.weight", f"attn/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
      Rule("cross_attn.o_proj.weight", "attn/o/kernel", MATRIX),
      Rule("cross_attn.q_layer_norm.weight", "attn/q_norm/scale"),
      Rule("cross_attn.k_layer_norm.weight", "attn/k_norm/scale"),
      *[Rule(f"mlp.{n}_proj.weight", f"mlp/{n}/kernel", MATRIX) for n in ("gate", "up", "down")],
  ]

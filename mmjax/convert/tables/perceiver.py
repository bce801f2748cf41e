"""Conversion rules of the Perceiver Resampler (`mmjax.connectors.perceiver`), relative to the
resampler's own key prefix (`model.perceiver_resampler.` in IDEFICS, `model.connector.
perceiver_resampler.` in Idefics2) and its parameter root."""

from mmjax.convert.rules import HEADS_MATRIX, MATRIX, Rule
from mmjax.convert.tables.common import prefixed


def _norm(hf: str, path: str, bias: bool) -> list[Rule]:
  rules = [Rule(f"{hf}.weight", f"{path}/scale")]
  return rules + [Rule(f"{hf}.bias", f"{path}/bias")] if bias else rules


def idefics_perceiver_rules() -> list[Rule]:
  """`IdeficsPerceiverResampler`: `blocks.{i}.0` the attention (with its two LayerNorms and the
  optional q/k LayerNorms), `blocks.{i}.1` the MLP (with its LayerNorm `ln`)."""
  attention = [
      *_norm("context_layer_norm", "context_norm", True),
      *_norm("latents_layer_norm", "latents_norm", True),
      *_norm("q_layer_norm", "attn/q_norm", True), *_norm("k_layer_norm", "attn/k_norm", True),
      *[Rule(f"{n}_proj.weight", f"attn/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
      Rule("output_proj.weight", "attn/o/kernel", MATRIX),
  ]
  mlp = [*_norm("ln", "mlp_norm", True), Rule("fc.weight", "mlp/fc1/kernel", MATRIX),
         Rule("c_proj.weight", "mlp/fc2/kernel", MATRIX)]
  return [Rule("latents", "latents"), *_norm("layer_norm", "norm", True),
          *prefixed(attention, "blocks.{i}.0.", "layers/"),
          *prefixed(mlp, "blocks.{i}.1.", "layers/")]


def idefics2_perceiver_rules() -> list[Rule]:
  """`Idefics2PerceiverResampler`: RMSNorms, grouped-query attention, a gated MLP."""
  layer = [
      *_norm("input_latents_norm", "latents_norm", False),
      *_norm("input_context_norm", "context_norm", False),
      *_norm("post_attention_layernorm", "mlp_norm", False),
      *[Rule(f"self_attn.{n}_proj.weight", f"attn/{n}/kernel", HEADS_MATRIX) for n in "qkv"],
      Rule("self_attn.o_proj.weight", "attn/o/kernel", MATRIX),
      *[Rule(f"mlp.{n}_proj.weight", f"mlp/{n}/kernel", MATRIX) for n in ("gate", "up", "down")],
  ]
  return [Rule("latents", "latents"), *_norm("norm", "norm", False),
          *prefixed(layer, "layers.{i}.", "layers/")]

"""Decoder configuration, read from and written back to transformers' text configs."""

import dataclasses
from typing import Any, Mapping

from mmjax.nn.rope import RopeConfig

# model_type -> (q/k/v bias, o bias, q/k norm) for configs that do not spell them out.
_FAMILY_DEFAULTS = {
    "llama": dict(qkv_bias=None, o_bias=None, qk_norm=False),
    "mistral": dict(qkv_bias=False, o_bias=False, qk_norm=False),
    "qwen2": dict(qkv_bias=True, o_bias=False, qk_norm=False),
    "qwen3": dict(qkv_bias=None, o_bias=None, qk_norm=True),
    "persimmon": dict(qkv_bias=True, o_bias=True, qk_norm=None),  # qk_norm: its qk_layernorm
    "opt": dict(qkv_bias=None, o_bias=None, qk_norm=False),  # biases: its enable_bias
}

# Persimmon (Fuyu's decoder) is the same block with other parts: LayerNorms with bias (blocks,
# final, q/k), a dense relu² MLP with biases, biased attention whose fused per-head qkv the
# conversion table splits, and partial RoPE (`RopeConfig.partial_rotary_factor`).
_PERSIMMON = dict(norm="layer", mlp="dense", mlp_bias=True)

# OPT is the same block again: LayerNorms (eps 1e-5, pre-LN), a dense MLP, one `enable_bias` for
# every Linear, no RoPE but a learned position table read at `position + 2` (transformers'
# `OPTLearnedPositionalEmbedding`), and token embeddings of `word_embed_proj_dim` projected in
# and out of the blocks' width when the two differ.
_OPT = dict(norm="layer", mlp="dense", rms_norm_eps=1e-5, position_offset=2)
_OPT_POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """One Llama-family decoder: Llama 2/3.x, Vicuna, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm),
  Persimmon (LayerNorms, dense MLP), OPT (LayerNorms, dense MLP, learned positions)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6  # every norm's eps, whatever `norm` is
  rope: RopeConfig = RopeConfig()
  activation: str = "silu"
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  norm: str = "rms"  # the blocks', final and q/k norms: "rms" or "layer" (`mmjax.nn.norms`)
  mlp: str = "gated"  # "gated" (down(act(gate) * up)) or "dense" (fc2(act(fc1)))
  tie_embeddings: bool = False
  sliding_window: int | None = None
  model_type: str = "llama"
  # Rows of a learned position table added to the input embeddings (OPT), read at
  # `position + position_offset`; 0: RoPE rotates q and k instead.
  learned_positions: int = 0
  position_offset: int = 0
  # Width of the token embeddings (and the LM head's input) when it is not `hidden_size`
  # (OPT's `word_embed_proj_dim`: bias-free `project_in` / `project_out` around the blocks).
  embed_dim: int = 0
  # Indices of cross-attention layers among the `num_layers` (Llama 3.2 Vision); their kind is
  # `cross_attention_kind`, the module `mmjax.decoders.<kind>` that defines its `BLOCK`.
  cross_attention_layers: tuple[int, ...] = ()
  cross_attention_kind: str = "cross"
  # Options of the `gated_cross` kind (IDEFICS): its tanh gates, one scalar ("float") or one per
  # channel ("vector"), and RMS q/k norms over head_dim.
  cross_attention_gate: str = "float"
  cross_attention_qk_norm: bool = False
  # Embedding rows beyond the vocabulary, which the LM head does not predict (Llama 3.2
  # Vision's 8: its image token and reserved ids).
  extra_embeddings: int = 0
  # Tokens past the vocabulary held in parameters of their own (`embed_additional`, and
  # `lm_head_additional` unless tied), embedded and predicted (logits `[..., V + A]`): IDEFICS'
  # decoupled embedding and LM head, whose new rows train while the base vocabulary stays frozen.
  additional_vocab_size: int = 0
  # Execution (not architecture): compute dtype, parameter dtype, remat policy, attention kernel.
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], tie_embeddings: bool | None = None, **overrides):
    model_type = cfg.get("model_type", "llama")
    if model_type not in _FAMILY_DEFAULTS:
      raise ValueError(f"unsupported decoder model_type {model_type!r}; "
                       f"supported: {sorted(_FAMILY_DEFAULTS)}")
    family = _FAMILY_DEFAULTS[model_type]
    bias = cfg.get("attention_bias", False)
    heads = cfg["num_attention_heads"]
    sliding = cfg.get("sliding_window")
    if model_type == "qwen2" and not cfg.get("use_sliding_window", False):
      sliding = None  # Qwen2 configs carry a window that is off unless use_sliding_window
    if tie_embeddings is None:
      tie_embeddings = bool(cfg.get("tie_word_embeddings", False))
    variant = {}
    if model_type == "opt":
      variant = _opt_from_hf(cfg, heads)
    elif model_type == "persimmon":
      # One head count (no GQA) whatever else the config carries.
      variant = dict(_PERSIMMON, rms_norm_eps=cfg.get("layer_norm_eps", 1e-5),
                     qk_norm=bool(cfg.get("qk_layernorm", True)), num_kv_heads=heads,
                     head_dim=cfg["hidden_size"] // heads)
    fields = dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_dim"] if model_type == "opt" else cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope=RopeConfig.from_hf(cfg),
        activation=cfg.get("hidden_act", "silu"),
        qkv_bias=bias if family["qkv_bias"] is None else family["qkv_bias"],
        o_bias=bias if family["o_bias"] is None else family["o_bias"],
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=family["qk_norm"],
        tie_embeddings=tie_embeddings,
        sliding_window=sliding,
        model_type=model_type,
    )
    return cls(**{**fields, **variant, **overrides})

  @property
  def embed_width(self) -> int:
    """Width of the token embeddings and of the LM head's input."""
    return self.embed_dim or self.hidden_size

  @property
  def projects_embeddings(self) -> bool:
    """Whether `project_in` / `project_out` map between the embedding and block widths."""
    return self.embed_width != self.hidden_size


def _opt_from_hf(cfg: Mapping[str, Any], heads: int) -> dict[str, Any]:
  """`OPTConfig` fields -> the decoder's; errors name the settings mmjax does not model."""
  for key, supported in (("do_layer_norm_before", True), ("_remove_final_layer_norm", False),
                         ("layer_norm_elementwise_affine", True)):
    if key in cfg and bool(cfg[key]) != supported:
      raise ValueError(f"OPT configs with {key}={cfg[key]} are not supported (only "
                       f"{key}={supported}: pre-LN blocks, a final LayerNorm with scale and bias)")
  bias = bool(cfg.get("enable_bias", True))
  hidden = cfg["hidden_size"]
  proj = cfg.get("word_embed_proj_dim") or hidden
  return dict(_OPT, activation=cfg.get("activation_function", "relu"), qkv_bias=bias,
              o_bias=bias, mlp_bias=bias, num_kv_heads=heads, head_dim=hidden // heads,
              learned_positions=cfg.get("max_position_embeddings", 2048) + _OPT_POSITION_OFFSET,
              embed_dim=0 if proj == hidden else proj,
              tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))


def decoder_to_hf(d: DecoderConfig) -> dict[str, Any]:
  """A transformers `LlamaConfig` / `MistralConfig` / `Qwen2Config` / `Qwen3Config` dict for the
  decoder (what `DecoderConfig.from_hf` reads back to `d`, execution settings aside)."""
  if d.model_type not in _FAMILY_DEFAULTS or d.cross_attention_layers or d.extra_embeddings \
      or d.additional_vocab_size:
    raise ValueError(f"cannot write a {d.model_type!r} text config"
                     + (" with cross-attention layers" if d.cross_attention_layers else ""))
  family = _FAMILY_DEFAULTS[d.model_type]
  for name in ("qkv_bias", "o_bias", "qk_norm"):  # what the model type fixes
    fixed = family[name]
    if fixed is not None and getattr(d, name) != fixed:
      raise ValueError(f"a {d.model_type!r} text config cannot say {name}={getattr(d, name)}")
  if d.model_type == "persimmon":
    return _persimmon_to_hf(d)
  if d.model_type == "opt":
    return _opt_to_hf(d)
  if d.learned_positions or d.embed_dim:
    raise ValueError(f"a {d.model_type!r} text config has no learned positions or "
                     "word_embed_proj_dim")
  if (d.norm, d.mlp) != ("rms", "gated"):
    raise ValueError(f"a {d.model_type!r} text config has RMS norms and a gated MLP, not "
                     f"norm={d.norm!r}, mlp={d.mlp!r}")
  out = dict(
      model_type=d.model_type, vocab_size=d.vocab_size, hidden_size=d.hidden_size,
      intermediate_size=d.intermediate_size, num_hidden_layers=d.num_layers,
      num_attention_heads=d.num_heads, num_key_value_heads=d.num_kv_heads, head_dim=d.head_dim,
      rms_norm_eps=d.rms_norm_eps, hidden_act=d.activation,
      max_position_embeddings=d.rope.max_position_embeddings,
      rope_parameters=d.rope.to_hf(), tie_word_embeddings=d.tie_embeddings)
  if d.rope.partial_rotary_factor != 1.0:
    out["partial_rotary_factor"] = d.rope.partial_rotary_factor
  if family["qkv_bias"] is None:  # one attention_bias for q/k/v and o
    if d.qkv_bias != d.o_bias:
      raise ValueError(f"a {d.model_type!r} text config has one attention_bias for q/k/v and o")
    out["attention_bias"] = d.qkv_bias
  if d.model_type == "llama":
    out["mlp_bias"] = d.mlp_bias
  elif d.mlp_bias:
    raise ValueError(f"a {d.model_type!r} text config has no MLP bias")
  if d.model_type == "qwen2":
    out.update(use_sliding_window=d.sliding_window is not None, sliding_window=d.sliding_window)
  elif d.sliding_window is not None:
    if d.model_type != "mistral":
      raise ValueError(f"a {d.model_type!r} text config has no sliding window")
    out["sliding_window"] = d.sliding_window
  return out


def _persimmon_to_hf(d: DecoderConfig) -> dict[str, Any]:
  """A transformers `PersimmonConfig` dict: one head count, head_dim = hidden / heads."""
  for name, fixed in _PERSIMMON.items():
    if getattr(d, name) != fixed:
      raise ValueError(f"a 'persimmon' text config cannot say {name}={getattr(d, name)!r}")
  if d.num_kv_heads != d.num_heads or d.head_dim * d.num_heads != d.hidden_size:
    raise ValueError("a 'persimmon' text config has num_kv_heads == num_heads and head_dim == "
                     f"hidden_size / num_heads, not {d.num_kv_heads}, {d.head_dim}")
  if d.sliding_window is not None:
    raise ValueError("a 'persimmon' text config has no sliding window")
  rope = dict(d.rope.to_hf(), partial_rotary_factor=d.rope.partial_rotary_factor)
  return dict(
      model_type="persimmon", vocab_size=d.vocab_size, hidden_size=d.hidden_size,
      intermediate_size=d.intermediate_size, num_hidden_layers=d.num_layers,
      num_attention_heads=d.num_heads, hidden_act=d.activation, layer_norm_eps=d.rms_norm_eps,
      qk_layernorm=d.qk_norm, max_position_embeddings=d.rope.max_position_embeddings,
      rope_parameters=rope, tie_word_embeddings=d.tie_embeddings)


def _opt_to_hf(d: DecoderConfig) -> dict[str, Any]:
  """A transformers `OPTConfig` dict: one head count, head_dim = hidden / heads, one bias flag."""
  for name, fixed in _OPT.items():
    if getattr(d, name) != fixed:
      raise ValueError(f"an 'opt' text config cannot say {name}={getattr(d, name)!r}")
  if not d.qkv_bias == d.o_bias == d.mlp_bias:
    raise ValueError("an 'opt' text config has one enable_bias for every Linear")
  if d.num_kv_heads != d.num_heads or d.head_dim * d.num_heads != d.hidden_size:
    raise ValueError("an 'opt' text config has num_kv_heads == num_heads and head_dim == "
                     f"hidden_size / num_heads, not {d.num_kv_heads}, {d.head_dim}")
  if d.sliding_window is not None or d.learned_positions <= _OPT_POSITION_OFFSET:
    raise ValueError("an 'opt' text config has learned positions and no sliding window")
  return dict(
      model_type="opt", vocab_size=d.vocab_size, hidden_size=d.hidden_size, ffn_dim=d.intermediate_size,
      num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads,
      activation_function=d.activation, enable_bias=d.qkv_bias, do_layer_norm_before=True,
      max_position_embeddings=d.learned_positions - _OPT_POSITION_OFFSET,
      word_embed_proj_dim=d.embed_width, tie_word_embeddings=d.tie_embeddings)

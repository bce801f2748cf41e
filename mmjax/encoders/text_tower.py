"""CLIP and SigLIP text transformers (the text towers of the dual encoders).

Token + learned position embeddings, the same pre-LN layers as the vision towers (`vit.py`'s
`EncoderBlock`, scanned), a final LayerNorm, then one pooled state per text:
CLIP: causal attention (plus the padding mask), pooled at the EOS token as transformers picks it;
SigLIP: bidirectional attention (the padding mask only when given), pooled at the last position
(padding included, as SigLIP is trained on max-length padding), then its `head` Linear.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.vit import EncoderBlock
from mmjax.nn.axes import TEXT_AXES
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.masks import attention_mask
from mmjax.nn.norms import LayerNorm
from mmjax.nn.stack import scan_layers

_KINDS = {"clip_text_model": "clip", "siglip_text_model": "siglip"}
# Before transformers PR #24773 CLIP configs said eos_token_id=2; such models pool at the
# largest token id (the EOS token was the vocabulary's last), as transformers still does.
LEGACY_CLIP_EOS = 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  kind: str  # 'clip' | 'siglip'
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  max_positions: int
  layer_norm_eps: float = 1e-5
  activation: str = "quick_gelu"
  eos_token_id: int | None = None  # CLIP's pooling token
  # CLIP: where the text is pooled. "transformers": its rule (the first `eos_token_id`, or the
  # largest id when that is 2, see LEGACY_CLIP_EOS); "eos": the first `eos_token_id` always (a
  # tower trained from scratch with a tokenizer whose end token is 2, e.g. the shapes set's;
  # transformers cannot express it, so such a model has no HF config).
  pooling: str = "transformers"
  projection_size: int | None = None  # SigLIP's `head` output width
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  def __post_init__(self):
    if self.kind not in ("clip", "siglip"):
      raise ValueError(f"unknown text tower kind {self.kind!r}; known: ['clip', 'siglip']")
    if self.kind == "clip" and not isinstance(self.eos_token_id, int):
      raise ValueError(f"a CLIP text tower pools at eos_token_id, which must be one token id, "
                       f"got {self.eos_token_id!r}")
    if self.pooling not in ("transformers", "eos"):
      raise ValueError(f"text pooling must be 'transformers' or 'eos', got {self.pooling!r}")
    if self.kind == "siglip" and not self.projection_size:
      raise ValueError("a SigLIP text tower needs projection_size (its head's width)")

  @property
  def output_size(self) -> int:
    """Width of the pooled output: SigLIP's head width, CLIP's hidden size (projected later)."""
    return self.projection_size if self.kind == "siglip" else self.hidden_size

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **overrides) -> "TextConfig":
    """transformers' `CLIPTextConfig` / `SiglipTextConfig` dict; missing keys take their
    defaults there."""
    model_type = cfg.get("model_type", "clip_text_model")
    if model_type not in _KINDS:
      raise ValueError(f"unsupported text model_type {model_type!r}; supported: {sorted(_KINDS)}")
    kind = _KINDS[model_type]
    clip = kind == "clip"
    hidden = cfg.get("hidden_size", 512 if clip else 768)
    return cls(
        kind=kind,
        vocab_size=cfg.get("vocab_size", 49408 if clip else 32000),
        hidden_size=hidden,
        intermediate_size=cfg.get("intermediate_size", 2048 if clip else 3072),
        num_layers=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 8 if clip else 12),
        max_positions=cfg.get("max_position_embeddings", 77 if clip else 64),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5 if clip else 1e-6),
        activation=cfg.get("hidden_act", "quick_gelu" if clip else "gelu_pytorch_tanh"),
        eos_token_id=cfg.get("eos_token_id", 49407) if clip else None,
        projection_size=None if clip else (cfg.get("projection_size") or hidden),
        **overrides,
    )

  def to_hf(self) -> dict[str, Any]:
    """transformers' text config dict (`from_hf` reads it back)."""
    out = dict(model_type={v: k for k, v in _KINDS.items()}[self.kind],
               vocab_size=self.vocab_size, hidden_size=self.hidden_size,
               intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
               num_attention_heads=self.num_heads, max_position_embeddings=self.max_positions,
               layer_norm_eps=self.layer_norm_eps, hidden_act=self.activation)
    if self.kind == "clip":
      if self.pooling == "eos" and self.eos_token_id == LEGACY_CLIP_EOS:
        raise ValueError(f"transformers pools a CLIP text tower whose eos_token_id is "
                         f"{LEGACY_CLIP_EOS} at the largest token id, not at its end token")
      out["eos_token_id"] = self.eos_token_id
    else:
      out["projection_size"] = self.projection_size
    return out


def pool_positions(config: TextConfig, ids: jax.Array) -> jax.Array:
  """`ids [N, L]` -> the position `[N]` whose state a text's embedding is, as transformers
  picks it: SigLIP the last; legacy CLIP the largest id; CLIP the first EOS (0 when none)."""
  if config.kind == "siglip":
    return jnp.full(ids.shape[:1], ids.shape[1] - 1, jnp.int32)
  if config.eos_token_id == LEGACY_CLIP_EOS and config.pooling == "transformers":
    return jnp.argmax(ids, axis=-1)
  return jnp.argmax(ids == config.eos_token_id, axis=-1)


class TextTransformer(nn.Module):
  """`ids [N, L]`, `mask [N, L]` (1 = token, or None) -> `last_hidden_state [N, L, D]` (after
  the final LayerNorm) and `pooled [N, output_size]` (transformers' `pooler_output`)."""

  config: TextConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    n, length = ids.shape
    if length > cfg.max_positions:
      raise ValueError(f"texts of {length} tokens exceed the {cfg.max_positions} positions")
    a = TEXT_AXES
    tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                      embedding_init=nn.with_logical_partitioning(DEFAULT_KERNEL_INIT,
                                                                  ("vocab", a.embed)),
                      name="token_embed")(ids)  # [N, L, D]
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, (None, a.embed)), (cfg.max_positions, cfg.hidden_size), param_dtype)
    x = tokens + pos[:length].astype(dtype)[None]
    index = jnp.arange(length)
    valid = None if mask is None else mask.astype(bool)
    if cfg.kind == "clip":
      attend = attention_mask(index, index, causal=True, k_valid=valid)  # [N|1, 1, L, L]
      attend = jnp.broadcast_to(attend, (n, 1, length, length))
    else:
      attend = None if valid is None else attention_mask(index, index, causal=False, k_valid=valid)
    stack = scan_layers(EncoderBlock, length=cfg.num_layers, remat_policy=cfg.remat_policy,
                        in_axes=(nn.broadcast,))
    x, _ = stack(cfg, a, name="layers")(x, attend)
    x = LayerNorm(cfg.layer_norm_eps, a.embed, param_dtype, name="final_norm")(x)
    pooled = jnp.take_along_axis(x, pool_positions(cfg, ids)[:, None, None], axis=1)[:, 0]
    if cfg.kind == "siglip":
      pooled = Einsum("ND,PD->NP", (cfg.projection_size, cfg.hidden_size), (None, a.embed),
                      bias_shape=(cfg.projection_size,), bias_axes=(None,), dtype=dtype,
                      param_dtype=param_dtype, name="head")(pooled)  # [N, P]
    return dict(last_hidden_state=x, pooled=pooled)

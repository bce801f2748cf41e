"""Perceiver Resampler (Flamingo): a fixed set of learned latents reads any number of image
features, so a prompt gets the same number of visual tokens whatever the image count or size.

Each layer lets the latents attend to the concatenation `[context; latents]` (keys and values
from both, queries from the latents), then applies a feed-forward block, both residual; a final
norm follows the (scanned) stack. One module covers both reference variants through its config:

- IDEFICS v1 (`IdeficsPerceiverResampler`): LayerNorm, one head per key/value head, a bias-free
  ReLU MLP (`fc` -> ReLU -> `c_proj`), optional LayerNorm over head_dim of queries and keys.
  Its max-subtracted softmax is what `jax.nn.softmax` computes anyway.
- Idefics2 (`Idefics2PerceiverResampler`): RMSNorm, grouped-query heads, a gated MLP, and a
  context mask (`attention_mask` over the image features; the latents are always visible).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.axes import Axes
from mmjax.nn.cross_attention import CrossAttention
from mmjax.nn.mlp import GatedMlp, Mlp
from mmjax.nn.norms import LayerNorm, RMSNorm
from mmjax.nn.stack import scan_layers

RESAMPLER_AXES = Axes(embed="embed", heads="heads", kv_heads="kv_heads", head_dim="head_dim",
                      mlp="mlp")
NORMS = ("layer", "rms")
MLPS = ("relu", "gated")


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
  features: int  # D: the latents', the context's and the output's width
  num_latents: int  # L: visual tokens per image
  depth: int
  num_heads: int
  head_dim: int
  num_kv_heads: int = 0  # 0: as many as num_heads (IDEFICS v1); fewer: grouped-query (Idefics2)
  mlp_features: int = 0  # 0: 4 * features
  norm: str = "layer"  # "layer" (IDEFICS v1) | "rms" (Idefics2)
  norm_eps: float = 1e-5
  mlp: str = "relu"  # "relu": fc -> ReLU -> c_proj (IDEFICS v1) | "gated": gate/up/down (Idefics2)
  activation: str = "silu"  # the gated MLP's
  qk_norm: bool = False  # LayerNorm over head_dim of queries and keys (IDEFICS v1 option)
  remat_policy: str = "none"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ValueError(f"resampler norm {self.norm!r}; expected one of {NORMS}")
    if self.mlp not in MLPS:
      raise ValueError(f"resampler mlp {self.mlp!r}; expected one of {MLPS}")
    if self.qk_norm and self.norm != "layer":
      raise ValueError("qk_norm is IDEFICS v1's LayerNorm over head_dim; it needs norm='layer'")
    if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
      raise ValueError(f"{self.num_heads} heads do not divide into {self.kv_heads} key/value heads")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def hidden(self) -> int:
    return self.mlp_features or 4 * self.features


def _norm(cfg: ResamplerConfig, name: str) -> nn.Module:
  cls = LayerNorm if cfg.norm == "layer" else RMSNorm
  return cls(cfg.norm_eps, RESAMPLER_AXES.embed, jnp.dtype(cfg.param_dtype), name=name)


class ResamplerLayer(nn.Module):
  """`latents [B, L, D]`, `context [B, S, D]`, `mask [B, 1, L, S + L] | None` -> latents."""

  config: ResamplerConfig

  @nn.compact
  def __call__(self, latents, context, mask):
    cfg = self.config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    queries = _norm(cfg, "latents_norm")(latents)
    states = jnp.concatenate([_norm(cfg, "context_norm")(context), queries], axis=1)
    latents = latents + CrossAttention(
        cfg.num_heads, cfg.kv_heads, cfg.head_dim, RESAMPLER_AXES, qk_norm=cfg.qk_norm,
        qk_norm_kind="layer", norm_eps=cfg.norm_eps, name="attn", **kw)(queries, mask, states)
    h = _norm(cfg, "mlp_norm")(latents)
    if cfg.mlp == "relu":
      h = Mlp(cfg.hidden, "relu", use_bias=False, name="mlp", **kw)(h)
    else:
      h = GatedMlp(cfg.hidden, cfg.activation, name="mlp", **kw)(h)
    return latents + h, None


class PerceiverResampler(nn.Module):
  """`context [B, S, D]` image features (+ `context_mask [B, S]`, True where real) ->
  `[B, L, D]` visual tokens."""

  config: ResamplerConfig

  @nn.compact
  def __call__(self, context: jax.Array, context_mask: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    b, s, _ = context.shape
    latents = self.param(
        "latents", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                (None, RESAMPLER_AXES.embed)),
        (cfg.num_latents, cfg.features), jnp.dtype(cfg.param_dtype))
    x = jnp.broadcast_to(latents.astype(context.dtype), (b, *latents.shape))  # [B, L, D]
    mask = None
    if context_mask is not None:  # keys: the context where real, then every latent
      keys = jnp.concatenate([context_mask.astype(bool), jnp.ones((b, cfg.num_latents), bool)],
                             axis=1)  # [B, S + L]
      mask = jnp.broadcast_to(keys[:, None, None, :], (b, 1, cfg.num_latents, s + cfg.num_latents))
    stack = scan_layers(ResamplerLayer, length=cfg.depth, remat_policy=cfg.remat_policy,
                        in_axes=(nn.broadcast, nn.broadcast))
    x, _ = stack(cfg, name="layers")(x, context, mask)
    return _norm(cfg, "norm")(x)

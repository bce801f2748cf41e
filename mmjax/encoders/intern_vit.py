"""InternViT (InternVL's vision tower): a class-token ViT with layer scale and optional q/k norm.

Differences from CLIP: per-channel layer scale (`ls1`, `ls2`) on both residual branches, LayerNorm
or RMSNorm blocks, an RMSNorm over all heads of the queries and keys (InternViT-6B), no
pre-layernorm, and stochastic depth (drop path) that is only active in training. `hidden_states`
follows transformers: index 0 is the embedding output, index i the output of layer i.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import axes as ax
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import VISION_AXES
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.mlp import Mlp
from mmjax.nn.norms import LayerNorm, RMSNorm
from mmjax.nn.stack import scan_layers

NORM_TYPES = ("layer_norm", "rms_norm")


@dataclasses.dataclass(frozen=True)
class InternVitConfig:
  image_size: int
  patch_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  norm_type: str = "layer_norm"  # block norms: 'layer_norm' (300M) | 'rms_norm' (6B)
  qkv_bias: bool = True
  qk_norm: bool = False  # RMSNorm over all heads of q and k (InternViT-6B)
  qk_norm_eps: float = 1e-6
  activation: str = "gelu"
  layer_scale_init: float = 0.1
  post_norm: bool = False  # final LayerNorm (transformers' use_mean_pooling=False); InternVL has none
  drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this at the last layer
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  def __post_init__(self):
    if self.norm_type not in NORM_TYPES:
      raise ValueError(f"unknown InternViT norm_type {self.norm_type!r}; known: {NORM_TYPES}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid**2 + 1  # class token first

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **overrides) -> "InternVitConfig":
    """Reads transformers' `InternVLVisionConfig` (model_type `internvl_vision`)."""
    return cls(
        image_size=_square(cfg["image_size"], "image_size"),
        patch_size=_square(cfg["patch_size"], "patch_size"),
        hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        num_channels=cfg.get("num_channels", 3), layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
        norm_type=cfg.get("norm_type", "layer_norm"), qkv_bias=cfg.get("attention_bias", False),
        qk_norm=cfg.get("use_qk_norm", False), qk_norm_eps=1e-6,
        activation=cfg.get("hidden_act", "gelu"),
        layer_scale_init=cfg.get("layer_scale_init_value", 0.1),
        post_norm=not cfg.get("use_mean_pooling", True), **overrides)

  @classmethod
  def from_original(cls, cfg: Mapping[str, Any], **overrides) -> "InternVitConfig":
    """Reads the original release's `vision_config` (model_type `intern_vit_6b`)."""
    return cls(
        image_size=_square(cfg["image_size"], "image_size"),
        patch_size=_square(cfg["patch_size"], "patch_size"),
        hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        num_channels=cfg.get("num_channels", 3), layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
        norm_type=cfg.get("norm_type", "rms_norm"), qkv_bias=cfg.get("qkv_bias", True),
        qk_norm=cfg.get("qk_normalization", False), qk_norm_eps=cfg.get("layer_norm_eps", 1e-6),
        activation=cfg.get("hidden_act", "gelu"),
        layer_scale_init=cfg.get("initializer_factor", 0.1),
        drop_path_rate=cfg.get("drop_path_rate", 0.0), **overrides)

  def to_hf(self) -> dict[str, Any]:
    """transformers' `InternVLVisionConfig` fields."""
    return dict(
        model_type="internvl_vision", image_size=[self.image_size] * 2,
        patch_size=[self.patch_size] * 2, hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads, num_channels=self.num_channels,
        layer_norm_eps=self.layer_norm_eps, norm_type=self.norm_type, attention_bias=self.qkv_bias,
        use_qk_norm=self.qk_norm, hidden_act=self.activation,
        layer_scale_init_value=self.layer_scale_init, use_mean_pooling=not self.post_norm)


def _square(value, name: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"InternViT {name} must be square, got {value}")
    value = value[0]
  return int(value)


def _norm(cfg: InternVitConfig, name: str) -> nn.Module:
  cls = LayerNorm if cfg.norm_type == "layer_norm" else RMSNorm
  return cls(cfg.layer_norm_eps, VISION_AXES.embed, jnp.dtype(cfg.param_dtype), name=name)


def drop_path(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
  """Zeroes whole samples of a residual branch with probability `rate`, rescaling the rest."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / jnp.maximum(1.0 - rate, 1e-6).astype(x.dtype), 0).astype(x.dtype)


class InternAttention(nn.Module):
  """Bidirectional multi-head attention; q/k norm (when on) spans all heads, as in InternViT-6B."""

  config: InternVitConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    a = VISION_AXES
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    n, d = cfg.num_heads, cfg.hidden_size
    h = d // n

    def proj(name):  # out-major kernel [N, H, D], as torch stores [N*H, D]
      return Einsum("BTD,NHD->BTNH", (n, h, d), (a.heads, a.head_dim, a.embed),
                    bias_shape=(n, h) if cfg.qkv_bias else None, bias_axes=(a.heads, a.head_dim),
                    name=name, **kw)(x)

    q, k, v = proj("q"), proj("k"), proj("v")  # [B, T, N, H]
    if cfg.qk_norm:
      b, t = x.shape[:2]
      norm = lambda name, y: RMSNorm(cfg.qk_norm_eps, a.embed, kw["param_dtype"], name=name)(
          y.reshape(b, t, n * h)).reshape(b, t, n, h)
      q, k = norm("q_norm", q), norm("k_norm", k)
    out = dot_product_attention(q, k, v, None, scale=h**-0.5, backend=cfg.attention_backend)
    return Einsum("BTNH,DNH->BTD", (d, n, h), (a.embed, a.heads, a.head_dim), bias_shape=(d,),
                  bias_axes=(a.embed,), name="o", **kw)(out)


class InternBlock(nn.Module):
  config: InternVitConfig
  train: bool = False

  @nn.compact
  def __call__(self, x, rate):
    """`x [B, N, D]`; `rate` is this layer's drop-path probability (a scanned scalar)."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    scale = lambda name: self.param(name, nn.with_logical_partitioning(
        nn.initializers.constant(cfg.layer_scale_init), ("vit_embed",)), (cfg.hidden_size,),
        param_dtype).astype(dtype)
    active = self.train and cfg.drop_path_rate > 0
    branch = lambda h: drop_path(h, rate, self.make_rng("dropout")) if active else h
    h = InternAttention(cfg, name="attn")(_norm(cfg, "norm1")(x))
    x = x + branch(scale("ls1") * h)
    h = Mlp(cfg.intermediate_size, cfg.activation, in_axis="vit_embed", hidden_axis="vit_mlp",
            dtype=dtype, param_dtype=param_dtype, name="mlp")(_norm(cfg, "norm2")(x))
    x = x + branch(scale("ls2") * h)
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, "activation_vit_embed"))
    return x, x


class InternVisionTransformer(nn.Module):
  """`pixels [B, H, W, C]` -> `hidden_states [L+1, B, N, D]`, `last_hidden_state [B, N, D]`."""

  config: InternVitConfig

  @nn.compact
  def __call__(self, pixels: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """`train=True` turns on drop path (needs a 'dropout' rng)."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    b, height, width, c = pixels.shape
    if height != cfg.image_size or width != cfg.image_size or c != cfg.num_channels:
      raise ValueError(f"expected tiles of {cfg.image_size}x{cfg.image_size}x{cfg.num_channels} "
                       f"(NHWC), got {pixels.shape}")
    g, p = cfg.grid, cfg.patch_size
    patches = pixels.astype(dtype).reshape(b, g, p, g, p, c).transpose(0, 1, 3, 5, 2, 4)
    patches = patches.reshape(b, g * g, c, p, p)  # [B, N, C, P, P] row-major over the grid
    x = Einsum("BNcpq,Dcpq->BND", (cfg.hidden_size, c, p, p), ("vit_embed", None, None, None),
               bias_shape=(cfg.hidden_size,), bias_axes=("vit_embed",), dtype=dtype,
               param_dtype=param_dtype, name="patch_embed")(patches)  # [B, N, D]
    cls = self.param("class_embed", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, ("vit_embed",)), (cfg.hidden_size,), param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, cfg.hidden_size)), x], axis=1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, (None, "vit_embed")), (cfg.num_positions, cfg.hidden_size), param_dtype)
    x = x + pos.astype(dtype)[None]
    stack = scan_layers(InternBlock, length=cfg.num_layers, remat_policy=cfg.remat_policy,
                        in_axes=(0,))
    rates = jnp.linspace(0.0, cfg.drop_path_rate, cfg.num_layers, dtype=jnp.float32)
    last, per_layer = stack(cfg, train, name="layers")(x, rates)
    hidden_states = jnp.concatenate([x[None], per_layer], axis=0)  # [L+1, B, N, D]
    if cfg.post_norm:
      last = LayerNorm(cfg.layer_norm_eps, "vit_embed", param_dtype, name="post_norm")(last)
    return dict(hidden_states=hidden_states, last_hidden_state=last)

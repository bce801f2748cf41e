"""CLIP, SigLIP and BLIP-2 (EVA) vision transformers.

CLIP: class token, pre-layernorm, quick_gelu, bias-free patch convolution.
SigLIP: no class token, biased patch convolution, gelu_tanh, optional attention-pooling head.
BLIP-2 (`blip2`, EVA ViT-g in the release): class token, biased patch convolution, no
pre-layernorm, exact gelu, `post_layernorm` over every token. Its fused `qkv` Linear starts with
a zero key bias (q and v biases only); transformers 5 keeps the whole fused bias as one parameter,
so the key bias is a parameter here too (zero in released checkpoints), which keeps export bit
for bit. The conversion table splits the fused tensor.
Idefics2's SigLIP (`fractional_positions`): images of any size (a batch padded to its largest),
a patch mask that keeps padding patches out of attention, and fractional position ids
(`mmjax.encoders.fractional_positions`).
Both keep transformers' `hidden_states` convention: index 0 is the embedding output (after the
pre-layernorm), index i the output of layer i, so feature-layer indices mean the same thing here.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.fractional_positions import fractional_position_ids
from mmjax.nn import axes as ax
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import VISION_AXES, Axes
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.mlp import Mlp
from mmjax.nn.multihead import MultiHeadAttention
from mmjax.nn.norms import LayerNorm
from mmjax.nn.stack import first_layers, scan_layers

_KINDS = {"clip_vision_model": "clip", "siglip_vision_model": "siglip",
          "blip_2_vision_model": "blip2"}
_DEFAULT_EPS = {"clip": 1e-5, "siglip": 1e-6, "blip2": 1e-6}
_DEFAULT_ACT = {"clip": "quick_gelu", "siglip": "gelu_pytorch_tanh", "blip2": "gelu"}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  kind: str  # 'clip' | 'siglip' | 'blip2'
  image_size: int
  patch_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  activation: str = "quick_gelu"
  pooling_head: bool = False  # SigLIP's attention-pooling head
  # Idefics2: any image size; each patch takes the table position of its fraction of the image's
  # valid extent (the patch mask's), not of its place in an `image_size` grid.
  fractional_positions: bool = False
  qkv_bias: bool = True  # BLIP-2's `qkv_bias` (CLIP and SigLIP always have them)
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  @property
  def class_token(self) -> bool:
    return self.kind in ("clip", "blip2")

  @property
  def patch_bias(self) -> bool:
    return self.kind != "clip"

  @property
  def pre_norm(self) -> bool:
    """CLIP's `pre_layrnorm` after the embeddings."""
    return self.kind == "clip"

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid**2 + (1 if self.class_token else 0)

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **overrides) -> "VisionConfig":
    model_type = cfg.get("model_type", "clip_vision_model")
    if model_type not in _KINDS:
      raise ValueError(f"unsupported vision model_type {model_type!r}; supported: {sorted(_KINDS)}")
    kind = _KINDS[model_type]
    return cls(
        kind=kind,
        image_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        num_channels=cfg.get("num_channels", 3),
        layer_norm_eps=cfg.get("layer_norm_eps", _DEFAULT_EPS[kind]),
        activation=cfg.get("hidden_act", _DEFAULT_ACT[kind]),
        pooling_head=kind == "siglip" and cfg.get("vision_use_head", True),
        qkv_bias=bool(cfg.get("qkv_bias", True)) if kind == "blip2" else True,
        **overrides,
    )

  def to_hf(self) -> dict[str, Any]:
    """transformers' `CLIPVisionConfig` / `SiglipVisionConfig` / `Blip2VisionConfig` dict
    (`from_hf` reads it back)."""
    if self.kind != "siglip" and self.pooling_head:
      raise ValueError(f"a {self.kind} vision config has no attention-pooling head")
    if self.kind != "blip2" and not self.qkv_bias:
      raise ValueError(f"a {self.kind} vision config has q/k/v biases")
    if self.fractional_positions:
      raise ValueError("CLIP / SigLIP vision configs have no fractional positions (Idefics2's "
                       "tower writes its own config)")
    out = dict(model_type={v: k for k, v in _KINDS.items()}[self.kind],
               image_size=self.image_size, patch_size=self.patch_size,
               hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
               num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
               num_channels=self.num_channels, layer_norm_eps=self.layer_norm_eps,
               hidden_act=self.activation)
    if self.kind == "siglip":
      out["vision_use_head"] = self.pooling_head
    if self.kind == "blip2":
      out["qkv_bias"] = self.qkv_bias
    return out


class EncoderBlock(nn.Module):
  """A pre-LN transformer layer (CLIP / SigLIP, vision and text towers alike).

  `config` is any config with `hidden_size`, `num_heads`, `intermediate_size`, `activation`,
  `layer_norm_eps`, `dtype`, `param_dtype` and `attention_backend` (a `VisionConfig`, the text
  towers' `TextConfig`); `axes` names its parameters' logical axes.
  """

  config: Any
  axes: Axes = VISION_AXES

  @nn.compact
  def __call__(self, x, mask):
    """`x [B, T, D]`, `mask [B, 1, T, T]` bool or None (every token sees every token)."""
    cfg, a = self.config, self.axes
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = lambda name: LayerNorm(cfg.layer_norm_eps, a.embed, param_dtype, name=name)
    h, _ = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, axes=a,
        qkv_bias=getattr(cfg, "qkv_bias", True), o_bias=True,
        backend=cfg.attention_backend, dtype=dtype, param_dtype=param_dtype, name="attn",
    )(norm("norm1")(x), mask)
    x = x + h
    h = Mlp(cfg.intermediate_size, cfg.activation, in_axis=a.embed, hidden_axis=a.mlp,
            dtype=dtype, param_dtype=param_dtype, name="mlp")(norm("norm2")(x))
    x = nn.with_logical_constraint(x + h, (ax.BATCH, ax.LENGTH, f"activation_{a.embed}"))
    return x, x


class AttentionPoolingHead(nn.Module):
  """SigLIP's head: one learned probe attends over all patches, then a residual MLP."""

  config: VisionConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, None, "vit_embed")), (1, 1, cfg.hidden_size), param_dtype)
    probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, cfg.hidden_size))
    heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    a = VISION_AXES

    def proj(name, inp):
      return Einsum("BTD,NHD->BTNH", (heads, head_dim, cfg.hidden_size), (a.heads, a.head_dim, a.embed),
                    bias_shape=(heads, head_dim), bias_axes=(a.heads, a.head_dim), name=name, **kw)(inp)

    q, k, v = proj("q", probe), proj("k", x), proj("v", x)
    out = dot_product_attention(q, k, v, None, scale=head_dim**-0.5, backend=cfg.attention_backend)
    h = Einsum("BTNH,DNH->BTD", (cfg.hidden_size, heads, head_dim), (a.embed, a.heads, a.head_dim),
               bias_shape=(cfg.hidden_size,), bias_axes=(a.embed,), name="o", **kw)(out)
    residual = h
    h = LayerNorm(cfg.layer_norm_eps, "vit_embed", param_dtype, name="norm")(h)
    h = residual + Mlp(cfg.intermediate_size, cfg.activation, in_axis="vit_embed",
                       hidden_axis="vit_mlp", name="mlp", **kw)(h)
    return h[:, 0]


class VisionTransformer(nn.Module):
  """`pixels [B, H, W, C]` -> hidden states of every layer, last hidden state, pooled output."""

  config: VisionConfig

  def patch_grid(self, pixels_shape) -> tuple[int, int]:
    """(rows, columns) of patches of `[B, H, W, C]` images; an error unless the tower takes them."""
    cfg = self.config
    _, height, width, c = pixels_shape
    p = cfg.patch_size
    if cfg.fractional_positions:
      if height < p or width < p or c != cfg.num_channels:
        raise ValueError(f"expected images of at least {p}x{p}x{cfg.num_channels} (NHWC), got "
                         f"{tuple(pixels_shape)}")
      return height // p, width // p  # a strided convolution's 'valid' patches
    if height != cfg.image_size or width != cfg.image_size or c != cfg.num_channels:
      raise ValueError(f"expected images of {cfg.image_size}x{cfg.image_size}x{cfg.num_channels} "
                       f"(NHWC), got {tuple(pixels_shape)}")
    return cfg.grid, cfg.grid

  @nn.compact
  def __call__(self, pixels: jax.Array, num_layers: int | None = None,
               patch_mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """Returns `hidden_states [L+1, B, N, D]`, `last_hidden_state [B, N, D]`, `pooled [B, D]`.

    `last_hidden_state` is the output of the final layer (CLIP) or its post-layernorm (SigLIP),
    as in transformers; `pooled` is CLIP's post-normed class token or SigLIP's head output.
    `num_layers < L` runs only the first that many layers (a caller that reads an earlier layer)
    and returns only `hidden_states [num_layers+1, B, N, D]`.
    `patch_mask [B, Gh, Gw]` (True: a real patch) hides padding patches as keys (every token
    still queries, as in transformers); with `fractional_positions` it also places the patches
    (all real when absent).
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    b, _, _, c = pixels.shape
    p = cfg.patch_size
    gh, gw = self.patch_grid(pixels.shape)
    if patch_mask is not None and patch_mask.shape != (b, gh, gw):
      raise ValueError(f"patch_mask {tuple(patch_mask.shape)} must be [batch, patch rows, patch "
                       f"columns] = {(b, gh, gw)} for images {tuple(pixels.shape)}")
    patches = pixels[:, :gh * p, :gw * p].astype(dtype)  # the remainder fills no patch
    patches = patches.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 5, 2, 4)
    patches = patches.reshape(b, gh * gw, c, p, p)  # [B, N, C, P, P] row-major over the grid
    # The kernel keeps torch's Conv2d layout [D, C, P, P].
    x = Einsum("BNcpq,Dcpq->BND", (cfg.hidden_size, c, p, p), ("vit_embed", None, None, None),
               bias_shape=(cfg.hidden_size,) if cfg.patch_bias else None, bias_axes=("vit_embed",),
               dtype=dtype, param_dtype=param_dtype, name="patch_embed")(patches)
    if cfg.class_token:
      cls = self.param("class_embed", nn.with_logical_partitioning(
          DEFAULT_KERNEL_INIT, ("vit_embed",)), (cfg.hidden_size,), param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, cfg.hidden_size)), x], axis=1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, (None, "vit_embed")), (cfg.num_positions, cfg.hidden_size), param_dtype)
    if cfg.fractional_positions:
      real = jnp.ones((b, gh, gw), bool) if patch_mask is None else patch_mask.astype(bool)
      x = x + pos.astype(dtype)[fractional_position_ids(real, cfg.grid)]  # [B, N, D]
    else:
      x = x + pos.astype(dtype)[None]
    if cfg.pre_norm:  # CLIP's pre-layernorm
      x = LayerNorm(cfg.layer_norm_eps, "vit_embed", param_dtype, name="pre_norm")(x)
    mask = None
    if patch_mask is not None:
      keys = patch_mask.reshape(b, gh * gw).astype(bool)
      if cfg.class_token:
        keys = jnp.concatenate([jnp.ones((b, 1), bool), keys], axis=1)
      t = keys.shape[1]
      mask = jnp.broadcast_to(keys[:, None, None, :], (b, 1, t, t))  # [B, 1, T, T]
    run = cfg.num_layers if num_layers is None or self.is_initializing() else num_layers
    if not 0 <= run <= cfg.num_layers:
      raise ValueError(f"num_layers must be in [0, {cfg.num_layers}], got {num_layers}")
    if run == 0:
      return dict(hidden_states=x[None])
    stack = scan_layers(EncoderBlock, length=run, remat_policy=cfg.remat_policy,
                        in_axes=(nn.broadcast,))
    if run < cfg.num_layers:
      stack = first_layers(stack, run)
    last, per_layer = stack(cfg, name="layers")(x, mask)
    hidden_states = jnp.concatenate([x[None], per_layer], axis=0)  # [run+1, B, N, D]
    if run < cfg.num_layers:
      return dict(hidden_states=hidden_states)
    post_norm = LayerNorm(cfg.layer_norm_eps, "vit_embed", param_dtype, name="post_norm")
    if cfg.kind == "blip2":  # every token post-normed; pooled: the class token normed again
      last = post_norm(last)
      return dict(hidden_states=hidden_states, last_hidden_state=last, pooled=post_norm(last[:, 0]))
    if cfg.class_token:
      return dict(hidden_states=hidden_states, last_hidden_state=last, pooled=post_norm(last[:, 0]))
    last = post_norm(last)
    pooled = AttentionPoolingHead(cfg, name="head")(last) if cfg.pooling_head else None
    return dict(hidden_states=hidden_states, last_hidden_state=last, pooled=pooled)

"""Llama 3.2 Vision's tiled vision tower (transformers' `MllamaVisionModel`).

An image arrives as `max_num_tiles` square tiles (unused ones zero, see
`mmjax.data.preprocess.mllama`). Each tile is patch-embedded, then: a gated pre-tile embedding
chosen by the image's aspect-ratio id, a class token per tile, a gated positional embedding
`(1 - tanh g) * pos + tanh g * tile_pos[aspect_ratio_id]`, `pre_norm`; every tile is padded with
zero tokens to a multiple of 8 and all tiles of one image attend to each other through the local
stack (plain pre-LN layers), `post_norm`, a gated post-tile embedding, and the global stack
(layers whose attention and MLP branches are scaled by `tanh(gate_attn)`, `tanh(gate_ffn)`).
The output is the global stack's output concatenated with the outputs of the local layers listed
in `intermediate_layers_indices`, padding tokens sliced off: `[N, tiles, patches+1, D*(1+K)]`.

Reference behaviour kept on purpose (transformers 5.24):

* `intermediate_layers_indices[k] = i` is the output of local layer i (0-based): the encoder's
  `hidden_states` tuple has one entry per layer and no embedding entry (transformers >= 4.57;
  4.45 put the embedding first, so its indices meant the layer before).
* The intermediate features are `torch.stack(layers, dim=-1).reshape(..., -1)`: interleaved,
  feature `d` of the k-th listed layer at `d*K + k`, after the global output's D features.
* The tile mask only forbids pairs where both tokens are invalid (an outer product of the
  invalid-token vector): padding tokens of every tile and all tokens of tiles with
  `aspect_ratio_mask` 0 are invalid, and valid tokens still attend to them. (A tile always has
  padding tokens: squares are 0, 1 or 4 mod 8, so `patches + 1` never is a multiple of 8 and the
  reference's `mask[:, :, -pad:] = 0`, which would mark every token at `pad = 0`, cannot misfire.)
* `pre_norm`/`post_norm` use LayerNorm's default eps 1e-5, the layers `norm_eps`.

Parameters (HF keys relative to `model.vision_model.`; `mmjax.convert.tables.mllama_vision`):

  patch_embed/kernel [D, C, P, P]               patch_embedding.weight
  class_embed [D]                               class_embedding
  pre_tile_embed/embedding [R+1, T, D]          pre_tile_positional_embedding.embedding.weight
  pre_tile_embed/gate [1]                       pre_tile_positional_embedding.gate
  pos_embed/embedding [S, D]                    gated_positional_embedding.embedding
  pos_embed/gate [1]                            gated_positional_embedding.gate
  pos_embed/tile_embedding [R+1, T, S, D]       gated_positional_embedding.tile_embedding.weight
  pre_norm/{scale,bias}                         layernorm_pre.{weight,bias}
  post_norm/{scale,bias}                        layernorm_post.{weight,bias}
  post_tile_embed/embedding [R+1, T, D]         post_tile_positional_embedding.embedding.weight
  post_tile_embed/gate [1]                      post_tile_positional_embedding.gate
  layers/attn/{q,k,v}/kernel [L, N, H, D]       transformer.layers.{i}.self_attn.{q,k,v}_proj.weight
  layers/attn/o/kernel [L, D, N, H]             transformer.layers.{i}.self_attn.o_proj.weight
  layers/mlp/fc{1,2}/{kernel,bias}              transformer.layers.{i}.mlp.fc{1,2}.{weight,bias}
  layers/norm1/{scale,bias}                     transformer.layers.{i}.input_layernorm.*
  layers/norm2/{scale,bias}                     transformer.layers.{i}.post_attention_layernorm.*
  global_layers/...                             global_transformer.layers.{i}.... (as layers/)
  global_layers/gate_{attn,ffn} [G, 1]          global_transformer.layers.{i}.gate_{attn,ffn}

(S = patches + 1, R = len(supported_aspect_ratios), T = max_num_tiles; HF's embedding tables are
flat `[R+1, T*D]` and `[R+1, T*S*D]`, reshaped here so `vit_embed` can be sharded.)
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import axes as ax
from mmjax.nn.axes import VISION_AXES
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.mlp import Mlp
from mmjax.nn.multihead import MultiHeadAttention
from mmjax.nn.norms import LayerNorm
from mmjax.nn.stack import scan_layers

DEFAULT_ASPECT_RATIOS = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))
_TILE_NORM_EPS = 1e-5  # layernorm_pre / layernorm_post are torch LayerNorms with default eps


@dataclasses.dataclass(frozen=True)
class MllamaVisionConfig:
  image_size: int  # tile side in pixels
  patch_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int  # local stack
  num_global_layers: int
  num_heads: int
  max_num_tiles: int = 4
  intermediate_layers_indices: tuple[int, ...] = (3, 7, 15, 23, 30)
  supported_aspect_ratios: tuple[tuple[int, int], ...] = DEFAULT_ASPECT_RATIOS
  vision_output_dim: int | None = None  # HF's field, read by the projector; None: output_dim
  num_channels: int = 3
  norm_eps: float = 1e-5
  activation: str = "gelu"
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"Mllama vision image_size {self.image_size} is not a multiple of "
                       f"patch_size {self.patch_size}")
    for i in self.intermediate_layers_indices:
      if not -self.num_layers <= i < self.num_layers:
        raise ValueError(f"Mllama vision intermediate_layers_indices "
                         f"{self.intermediate_layers_indices} must index the {self.num_layers} "
                         "local layers")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    """Tokens per tile: patches and the class token."""
    return self.grid**2 + 1

  @property
  def padded_positions(self) -> int:
    return -(-self.num_positions // 8) * 8

  @property
  def num_aspect_ratio_ids(self) -> int:
    return len(self.supported_aspect_ratios) + 1  # id 0 is a padding image

  @property
  def layer_indices(self) -> tuple[int, ...]:
    """`intermediate_layers_indices` made non-negative (Python indexing, as the reference)."""
    return tuple(i % self.num_layers for i in self.intermediate_layers_indices)

  @property
  def output_dim(self) -> int:
    return self.hidden_size * (1 + len(self.intermediate_layers_indices))

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "MllamaVisionConfig":
    """Reads transformers' `MllamaVisionConfig` (model_type `mllama_vision_model`)."""
    return cls(
        image_size=_side(cfg.get("image_size", 448), "image_size"),
        patch_size=_side(cfg.get("patch_size", 14), "patch_size"),
        hidden_size=cfg.get("hidden_size", 1280),
        intermediate_size=cfg.get("intermediate_size", 5120),
        num_layers=cfg.get("num_hidden_layers", 32),
        num_global_layers=cfg.get("num_global_layers", 8),
        num_heads=cfg.get("attention_heads", cfg.get("num_attention_heads", 16)),
        max_num_tiles=cfg.get("max_num_tiles", 4),
        intermediate_layers_indices=tuple(_default(cfg, "intermediate_layers_indices",
                                                   (3, 7, 15, 23, 30))),
        supported_aspect_ratios=tuple(
            tuple(r) for r in _default(cfg, "supported_aspect_ratios", DEFAULT_ASPECT_RATIOS)),
        vision_output_dim=cfg.get("vision_output_dim", 7680),
        num_channels=cfg.get("num_channels", 3), norm_eps=cfg.get("norm_eps", 1e-5),
        activation=cfg.get("hidden_act", "gelu"), **execution)

  def to_hf(self) -> dict[str, Any]:
    """transformers' `MllamaVisionConfig` fields."""
    return dict(
        model_type="mllama_vision_model", image_size=self.image_size, patch_size=self.patch_size,
        hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers, num_global_layers=self.num_global_layers,
        attention_heads=self.num_heads, max_num_tiles=self.max_num_tiles,
        intermediate_layers_indices=list(self.intermediate_layers_indices),
        supported_aspect_ratios=[list(r) for r in self.supported_aspect_ratios],
        vision_output_dim=self.vision_output_dim or self.output_dim,
        num_channels=self.num_channels, norm_eps=self.norm_eps, hidden_act=self.activation)


def _default(cfg: Mapping[str, Any], key: str, default):
  """HF stores None for "the default" in these list fields."""
  value = cfg.get(key)
  return default if value is None else value


def _side(value, name: str) -> int:
  """HF allows `[h, w]` sizes; the tower's arithmetic (`image_size // patch_size`) needs squares."""
  values = set(value) if isinstance(value, (list, tuple)) else {value}
  if len(values) != 1:
    raise ValueError(f"Mllama vision {name} must be square, got {value}")
  return int(values.pop())


def _gate(module: nn.Module, name: str, init=nn.initializers.zeros_init()) -> jax.Array:
  """A learned scalar (HF shape [1]) squashed by tanh."""
  gate = module.param(name, nn.with_logical_partitioning(init, (None,)), (1,),
                      jnp.dtype(module.config.param_dtype))
  return jnp.tanh(gate).astype(jnp.dtype(module.config.dtype))


class AspectRatioEmbedding(nn.Module):
  """`x [N, T, S, D] + tanh(gate) * embedding[aspect_ratio_ids]` broadcast over the tokens."""

  config: MllamaVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
    cfg = self.config
    table = self.param("embedding", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, (None, None, "vit_embed")),
        (cfg.num_aspect_ratio_ids, cfg.max_num_tiles, cfg.hidden_size),
        jnp.dtype(cfg.param_dtype))
    embed = table.astype(x.dtype)[aspect_ratio_ids]  # [N, T, D]
    return x + embed[:, :, None] * _gate(self, "gate")


class GatedPositionEmbedding(nn.Module):
  """`x + (1 - tanh g) * pos + tanh g * tile_pos[aspect_ratio_ids]`, `x [N, T, S, D]`."""

  config: MllamaVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
    cfg = self.config
    param_dtype = jnp.dtype(cfg.param_dtype)
    s, d = cfg.num_positions, cfg.hidden_size
    pos = self.param("embedding", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, (None, "vit_embed")), (s, d), param_dtype)
    tile_pos = self.param("tile_embedding", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, (None, None, None, "vit_embed")),
        (cfg.num_aspect_ratio_ids, cfg.max_num_tiles, s, d), param_dtype)
    gate = _gate(self, "gate")
    x = x + (1 - gate) * pos.astype(x.dtype)
    return x + gate * tile_pos.astype(x.dtype)[aspect_ratio_ids]  # [N, T, S, D]


class MllamaEncoderLayer(nn.Module):
  """Pre-LN layer; `gated` (the global stack) scales both branches by learned tanh gates."""

  config: MllamaVisionConfig
  gated: bool = False

  @nn.compact
  def __call__(self, x, mask):
    """`x [N, L, D]`, `mask [N, 1, L, L]` -> (`x`, `x`): every layer's output is kept."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = lambda name: LayerNorm(cfg.norm_eps, VISION_AXES.embed, param_dtype, name=name)
    h, _ = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, axes=VISION_AXES,
        backend=cfg.attention_backend, dtype=dtype, param_dtype=param_dtype, name="attn",
    )(norm("norm1")(x), mask)
    if self.gated:  # HF's _init_weights draws the gates from normal(initializer_range)
      h = _gate(self, "gate_attn", DEFAULT_KERNEL_INIT) * h
    x = x + h
    h = Mlp(cfg.intermediate_size, cfg.activation, in_axis="vit_embed", hidden_axis="vit_mlp",
            dtype=dtype, param_dtype=param_dtype, name="mlp")(norm("norm2")(x))
    if self.gated:
      h = _gate(self, "gate_ffn", DEFAULT_KERNEL_INIT) * h
    x = nn.with_logical_constraint(x + h, (ax.BATCH, ax.LENGTH, "activation_vit_embed"))
    return x, x


def tile_attention_mask(aspect_ratio_mask: jax.Array, num_positions: int,
                        padded_positions: int) -> jax.Array:
  """`aspect_ratio_mask [N, T]` -> `[N, 1, T*Sp, T*Sp]`, True where a query may attend.

  Only pairs of two invalid tokens (padding tokens, tokens of padding tiles) are masked, as in
  transformers' `_prepare_aspect_ratio_attention_mask`.
  """
  padding = jnp.arange(padded_positions) >= num_positions  # [Sp]
  invalid = (aspect_ratio_mask[:, :, None] == 0) | padding[None, None]  # [N, T, Sp]
  invalid = invalid.reshape(invalid.shape[0], -1)  # [N, T*Sp]
  return ~(invalid[:, :, None] & invalid[:, None, :])[:, None]


class MllamaVisionTransformer(nn.Module):
  """Tiles of N images -> `[N, T, S, D*(1+K)]` (global output ++ interleaved local layers)."""

  config: MllamaVisionConfig

  @nn.compact
  def __call__(self, pixel_values: jax.Array, aspect_ratio_ids: jax.Array,
               aspect_ratio_mask: jax.Array) -> jax.Array:
    """`pixel_values [N, T, H, W, C]` (NHWC tiles), `aspect_ratio_ids [N]` (0 = padding image),
    `aspect_ratio_mask [N, T]` (1 = a real tile); N runs over batch x images."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    n, t, height, width, c = pixel_values.shape
    side, p, d = cfg.image_size, cfg.patch_size, cfg.hidden_size
    if (t, height, width, c) != (cfg.max_num_tiles, side, side, cfg.num_channels):
      raise ValueError(f"expected pixel_values [N, {cfg.max_num_tiles}, {side}, {side}, "
                       f"{cfg.num_channels}] (NHWC tiles), got {pixel_values.shape}")
    if aspect_ratio_ids.shape != (n,) or aspect_ratio_mask.shape != (n, t):
      raise ValueError(f"expected aspect_ratio_ids [{n}] and aspect_ratio_mask [{n}, {t}], got "
                       f"{aspect_ratio_ids.shape} and {aspect_ratio_mask.shape}")
    g = cfg.grid
    patches = pixel_values.astype(dtype).reshape(n, t, g, p, g, p, c)
    patches = patches.transpose(0, 1, 2, 4, 6, 3, 5).reshape(n, t, g * g, c, p, p)
    # The kernel keeps torch's Conv2d layout [D, C, P, P]; no bias.
    x = Einsum("NTPcpq,Dcpq->NTPD", (d, c, p, p), ("vit_embed", None, None, None),
               dtype=dtype, param_dtype=param_dtype, name="patch_embed")(patches)  # [N, T, P, D]
    x = AspectRatioEmbedding(cfg, name="pre_tile_embed")(x, aspect_ratio_ids)
    cls = self.param("class_embed", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, ("vit_embed",)), (d,), param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (n, t, 1, d)), x], axis=2)
    x = GatedPositionEmbedding(cfg, name="pos_embed")(x, aspect_ratio_ids)  # [N, T, S, D]
    x = LayerNorm(_TILE_NORM_EPS, "vit_embed", param_dtype, name="pre_norm")(x)

    s, sp = cfg.num_positions, cfg.padded_positions
    x = jnp.pad(x, ((0, 0), (0, 0), (0, sp - s), (0, 0))).reshape(n, t * sp, d)
    mask = tile_attention_mask(aspect_ratio_mask, s, sp)  # [N, 1, T*Sp, T*Sp]
    local = scan_layers(MllamaEncoderLayer, length=cfg.num_layers,
                        remat_policy=cfg.remat_policy, in_axes=(nn.broadcast,))
    x, per_layer = local(cfg, name="layers")(x, mask)  # per_layer [L, N, T*Sp, D]
    x = LayerNorm(_TILE_NORM_EPS, "vit_embed", param_dtype, name="post_norm")(x)
    x = AspectRatioEmbedding(cfg, name="post_tile_embed")(x.reshape(n, t, sp, d), aspect_ratio_ids)
    global_stack = scan_layers(MllamaEncoderLayer, length=cfg.num_global_layers,
                               remat_policy=cfg.remat_policy, in_axes=(nn.broadcast,))
    x, _ = global_stack(cfg, True, name="global_layers")(x.reshape(n, t * sp, d), mask)

    k = len(cfg.layer_indices)
    picked = per_layer[jnp.asarray(cfg.layer_indices, jnp.int32)]  # [K, N, T*Sp, D]
    # torch.stack(..., dim=-1).reshape(..., -1): feature d of the k-th layer at d*K + k.
    picked = jnp.moveaxis(picked, 0, -1).reshape(n, t, sp, d * k)
    out = jnp.concatenate([x.reshape(n, t, sp, d), picked], axis=-1)  # [N, T, Sp, D*(1+K)]
    return out[:, :, :s]

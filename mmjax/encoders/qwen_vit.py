"""The Qwen-VL vision transformer: native resolution, images and videos packed in one sequence.

One module, three variants by config:

| | Qwen2-VL | Qwen2.5-VL | Qwen3-VL |
|---|---|---|---|
| norm / MLP | LayerNorm, fc1-act-fc2 | RMSNorm, SwiGLU (biased) | LayerNorm, fc1-act-fc2 |
| attention | per frame | per window, per frame at `fullatt_block_indexes` | per frame |
| position | 2-D RoPE | 2-D RoPE | 2-D RoPE + learned table interpolated to the grid |
| merger | LayerNorm | RMSNorm | LayerNorm, + DeepStack mergers on chosen layers |

The patch embedding is HF's Conv3d with stride = kernel, i.e. a linear map over each flattened
`(C, T, P, P)` patch; its kernel keeps torch's `[D, C, T, P, P]` layout. Attention is
block-diagonal through segment ids (`mmjax.nn.masks.attention_mask`); windows are segments too,
so the sequence stays in transformers' order (HF permutes into window order, which only changes
the summation order inside softmax). Index arrays come from `qwen_vit_inputs.packed_vision_inputs`.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.patch_merger import PatchMerger, PatchMergerConfig
from mmjax.nn import axes as ax
from mmjax.nn.axes import VISION_AXES
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.masks import attention_mask
from mmjax.nn.mlp import GatedMlp, Mlp
from mmjax.nn.multihead import MultiHeadAttention
from mmjax.nn.norms import LayerNorm, RMSNorm
from mmjax.nn.rope import rope_2d
from mmjax.nn.stack import scan_layers

KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
  kind: str  # 'qwen2_vl' | 'qwen2_5_vl' | 'qwen3_vl'
  hidden_size: int  # ViT width (Qwen2-VL's `embed_dim`)
  intermediate_size: int
  num_layers: int
  num_heads: int
  out_hidden_size: int  # the decoder's width (merger output)
  activation: str
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  in_channels: int = 3
  rope_theta: float = 10000.0
  window_size: int | None = None  # Qwen2.5-VL, in pixels
  fullatt_block_indexes: tuple[int, ...] = ()
  tokens_per_second: float = 1.0  # Qwen2.5-VL video M-RoPE time scale
  num_position_embeddings: int | None = None  # Qwen3-VL learned table
  deepstack_visual_indexes: tuple[int, ...] = ()
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown Qwen-VL vision kind {self.kind!r}; known: {KINDS}")
    for i in (*self.fullatt_block_indexes, *self.deepstack_visual_indexes):
      if not 0 <= i < self.num_layers:
        raise ValueError(f"vision layer index {i} out of range for {self.num_layers} layers")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_features(self) -> int:
    """Length of one flattened `(C, T, P, P)` patch (a row of HF's `pixel_values`)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def window(self) -> int | None:
    """Window side in merged tokens (Qwen2.5-VL), else None."""
    if self.kind != "qwen2_5_vl" or not self.window_size:
      return None
    return self.window_size // self.spatial_merge_size // self.patch_size

  @property
  def pos_embed_side(self) -> int | None:
    return int(self.num_position_embeddings**0.5) if self.num_position_embeddings else None

  def merger(self, postshuffle: bool = False) -> PatchMergerConfig:
    return PatchMergerConfig(
        in_features=self.hidden_size, out_features=self.out_hidden_size,
        merge_size=self.spatial_merge_size,
        norm="rmsnorm" if self.kind == "qwen2_5_vl" else "layernorm", postshuffle_norm=postshuffle,
        dtype=self.dtype, param_dtype=self.param_dtype)

  @classmethod
  def from_hf(cls, kind: str, cfg: Mapping[str, Any], **overrides) -> "QwenVisionConfig":
    """Reads the `vision_config` dict of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL config."""
    rope = cfg.get("rope_parameters") or {}
    common = dict(
        kind=kind, num_layers=cfg["depth"], num_heads=cfg["num_heads"],
        patch_size=cfg.get("patch_size", 14), temporal_patch_size=cfg.get("temporal_patch_size", 2),
        spatial_merge_size=cfg.get("spatial_merge_size", 2), in_channels=cfg.get("in_channels", 3),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
    )
    if kind == "qwen2_vl":
      width = cfg.get("embed_dim", 1280)
      return cls(**common, hidden_size=width, intermediate_size=int(width * cfg.get("mlp_ratio", 4)),
                 out_hidden_size=cfg["hidden_size"],
                 activation=cfg.get("hidden_act", "quick_gelu"), **overrides)
    extra: dict[str, Any] = {}
    if kind == "qwen2_5_vl":
      extra = dict(window_size=cfg.get("window_size", 112),
                   fullatt_block_indexes=tuple(cfg.get("fullatt_block_indexes", (7, 15, 23, 31))),
                   tokens_per_second=float(cfg.get("tokens_per_second", 4)))
    else:
      extra = dict(num_position_embeddings=cfg.get("num_position_embeddings", 2304),
                   deepstack_visual_indexes=tuple(cfg.get("deepstack_visual_indexes", (8, 16, 24))))
    default_act = "silu" if kind == "qwen2_5_vl" else "gelu_pytorch_tanh"
    return cls(**common, hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
               out_hidden_size=cfg["out_hidden_size"], activation=cfg.get("hidden_act", default_act),
               **extra, **overrides)

  def to_hf(self) -> dict[str, Any]:
    """The `vision_config` dict of a transformers Qwen-VL config (`from_hf` reads it back)."""
    out = dict(depth=self.num_layers, num_heads=self.num_heads, patch_size=self.patch_size,
               temporal_patch_size=self.temporal_patch_size,
               spatial_merge_size=self.spatial_merge_size, in_channels=self.in_channels,
               hidden_act=self.activation)
    if self.rope_theta != 10000.0:  # transformers' fixed value; mmjax reads it when given
      out["rope_parameters"] = {"rope_theta": self.rope_theta}
    if self.kind == "qwen2_vl":
      ratio = self.intermediate_size // self.hidden_size  # transformers takes an int
      if self.hidden_size * ratio != self.intermediate_size:
        raise ValueError(f"Qwen2-VL's (integer) mlp_ratio cannot express intermediate_size "
                         f"{self.intermediate_size} for width {self.hidden_size}")
      return dict(out, model_type="qwen2_vl", embed_dim=self.hidden_size, mlp_ratio=ratio,
                  hidden_size=self.out_hidden_size)
    out.update(model_type=self.kind, hidden_size=self.hidden_size,
               intermediate_size=self.intermediate_size, out_hidden_size=self.out_hidden_size)
    if self.kind == "qwen2_5_vl":
      return dict(out, window_size=self.window_size,
                  fullatt_block_indexes=list(self.fullatt_block_indexes),
                  tokens_per_second=int(self.tokens_per_second)
                  if float(self.tokens_per_second).is_integer() else self.tokens_per_second)
    return dict(out, num_position_embeddings=self.num_position_embeddings,
                deepstack_visual_indexes=list(self.deepstack_visual_indexes))


def vision_rope(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """`positions [..., N, 2]` (row, column) -> float32 `cos, sin [..., N, head_dim]`: rows and
  columns turn the same frequencies (`mmjax.nn.rope.rope_2d`'s 'shared' layout)."""
  return rope_2d(positions, head_dim, theta, "shared")


class QwenVisionBlock(nn.Module):
  config: QwenVisionConfig

  @nn.compact
  def __call__(self, x, full_mask, window_mask, rope, full):
    """`x [B, N, D]`; `full` says whether this layer attends per frame or per window."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm_cls = RMSNorm if cfg.kind == "qwen2_5_vl" else LayerNorm
    norm = lambda name: norm_cls(1e-6, VISION_AXES.embed, param_dtype, name=name)
    mask = full_mask if window_mask is None else jnp.where(full, full_mask, window_mask)
    h, _ = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads, head_dim=cfg.head_dim,
        axes=VISION_AXES, qkv_bias=True, o_bias=True, backend=cfg.attention_backend, dtype=dtype,
        param_dtype=param_dtype, name="attn",
    )(norm("norm1")(x), mask, rope)
    x = x + h
    h = norm("norm2")(x)
    if cfg.kind == "qwen2_5_vl":
      h = GatedMlp(cfg.intermediate_size, cfg.activation, embed_axis="vit_embed",
                   hidden_axis="vit_mlp", use_bias=True, dtype=dtype, param_dtype=param_dtype,
                   name="mlp")(h)
    else:
      h = Mlp(cfg.intermediate_size, cfg.activation, in_axis="vit_embed", hidden_axis="vit_mlp",
              dtype=dtype, param_dtype=param_dtype, name="mlp")(h)
    x = nn.with_logical_constraint(x + h, (ax.BATCH, ax.LENGTH, "activation_vit_embed"))
    return x, (x if cfg.deepstack_visual_indexes else None)


class DeepStackMergers(nn.Module):
  """One post-shuffle patch merger per DeepStack layer, parameters stacked on a `layers` axis."""

  config: QwenVisionConfig

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    """`hidden [K, ..., N, D]` -> `[K, ..., N/4, out]`."""
    mergers = nn.vmap(
        PatchMerger, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0,
        metadata_params={nn.PARTITION_NAME: ax.LAYERS})
    return mergers(self.config.merger(postshuffle=True), name="mergers")(hidden)


class QwenVisionTransformer(nn.Module):
  """Packed patches `[N, C*T*P*P]` + index arrays -> merged visual tokens `[N/4, D_text]`; or rows
  of them, `[B, N, ...]`, each encoded on its own (training batches)."""

  config: QwenVisionConfig

  @nn.compact
  def __call__(self, patches: jax.Array, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Encodes every image / video frame of the pack.

    Args:
      patches: `[N, C*T*P*P]` flattened patches, exactly HF's `pixel_values` rows; or `[B, N, ...]`
        rows that never attend to each other (every input then has the leading B too).
      inputs: `packed_vision_inputs(grid_thw, ...)` arrays for the same N patches.
    Returns:
      `features [N/4, D_text]`, `last_hidden_state [N, D]` and, for Qwen3-VL,
      `deepstack [K, N/4, D_text]` (features of the DeepStack layers); with rows, `[B, ...]`
      (`deepstack [K, B, N/4, D_text]`).
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    c, t, p = cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size
    if patches.shape[-1] != cfg.patch_features:
      raise ValueError(f"expected patches of {c}x{t}x{p}x{p} = {cfg.patch_features} values, got "
                       f"{patches.shape}")
    rows = patches.ndim == 3
    if not rows:  # one packed sequence: a batch of one
      patches, inputs = patches[None], {k: v[None] for k, v in inputs.items()}
    b, n = patches.shape[:2]
    patches = patches.astype(dtype).reshape(b, n, c, t, p, p)
    x = Einsum("BNctPQ,DctPQ->BND", (cfg.hidden_size, c, t, p, p),
               ("vit_embed", None, None, None, None),
               bias_shape=(cfg.hidden_size,) if cfg.kind == "qwen3_vl" else None,
               bias_axes=("vit_embed",), dtype=dtype, param_dtype=param_dtype,
               name="patch_embed")(patches)  # [B, N, D]
    if cfg.pos_embed_side:
      table = self.param("pos_embed", nn.with_logical_partitioning(
          DEFAULT_KERNEL_INIT, (None, "vit_embed")), (cfg.num_position_embeddings, cfg.hidden_size),
          param_dtype)
      taps = table.astype(dtype)[inputs["pos_index"]]  # [B, N, 4, D]
      x = x + jnp.sum(taps * inputs["pos_weight"][..., None].astype(dtype), axis=2)
    rope = vision_rope(inputs["positions"], cfg.head_dim, cfg.rope_theta)  # [B, N, head_dim]
    index = jnp.arange(n)
    segments = inputs["segment_ids"]  # [B, N]
    full_mask = attention_mask(index, index, causal=False, q_segment=segments, k_segment=segments)
    window_mask, full = None, jnp.ones((cfg.num_layers,), bool)
    if cfg.window:
      windows = inputs["window_ids"]
      window_mask = attention_mask(index, index, causal=False, q_segment=windows, k_segment=windows)
      full = jnp.asarray(np.isin(np.arange(cfg.num_layers), cfg.fullatt_block_indexes))
    stack = scan_layers(QwenVisionBlock, length=cfg.num_layers, remat_policy=cfg.remat_policy,
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0))
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, "activation_vit_embed"))
    x, hidden = stack(cfg, name="layers")(x, full_mask, window_mask, rope, full)  # [B, N, D]
    out = {"last_hidden_state": x, "features": PatchMerger(cfg.merger(), name="merger")(x)}
    if cfg.deepstack_visual_indexes:
      picked = hidden[jnp.asarray(cfg.deepstack_visual_indexes)]  # [K, B, N, D]
      out["deepstack"] = DeepStackMergers(cfg, name="deepstack")(picked)
    if not rows:
      out = {k: v[:, 0] if k == "deepstack" else v[0] for k, v in out.items()}
    return out

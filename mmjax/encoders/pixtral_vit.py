"""The Pixtral vision transformer: images of any size, all of a batch in one packed sequence.

Bias-free patch convolution, RMSNorm (eps 1e-5) before the stack (`ln_pre`) and in every block,
bias-free attention with a 2-D RoPE whose frequencies alternate between rows and columns
(`mmjax.nn.rope.rope_2d`'s 'alternating' layout), a gated MLP and no final norm. Each image keeps
its own patch grid (`image_sizes // patch_size`); the grids are flattened row-major and
concatenated, and attention stays inside an image through segment ids (transformers' block-diagonal
mask). The host cuts the processor's padded `pixel_values` into that sequence (`pack_images`).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn import axes as ax
from mmjax.nn.axes import VISION_AXES
from mmjax.nn.linear import Einsum
from mmjax.nn.masks import attention_mask
from mmjax.nn.mlp import GatedMlp
from mmjax.nn.multihead import MultiHeadAttention
from mmjax.nn.norms import RMSNorm
from mmjax.nn.rope import rope_2d
from mmjax.nn.stack import first_layers, scan_layers

NORM_EPS = 1e-5  # transformers fixes it; the config has no field for it


@dataclasses.dataclass(frozen=True)
class PixtralVisionConfig:
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  patch_size: int = 16
  image_size: int = 1024  # the longest side the processor resizes to (kept for the HF config)
  num_channels: int = 3
  activation: str = "gelu"
  rope_theta: float = 10000.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  def __post_init__(self):
    if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
      raise ValueError(f"Pixtral vision width {self.hidden_size} must split into {self.num_heads} "
                       "heads of a multiple of 4 features (a quarter each for rows and columns)")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **overrides) -> "PixtralVisionConfig":
    """Reads transformers' `PixtralVisionConfig` dict (v5 `rope_parameters`, or v4 `rope_theta`)."""
    if cfg.get("model_type") != "pixtral":
      raise ValueError(f"not a Pixtral vision config: model_type {cfg.get('model_type')!r}")
    rope = cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "axial")
    if rope_type != "axial":
      raise ValueError(f"Pixtral's vision RoPE is 'axial', got rope_type {rope_type!r}")
    return cls(hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
               num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
               patch_size=cfg.get("patch_size", 16), image_size=cfg.get("image_size", 1024),
               num_channels=cfg.get("num_channels", 3), activation=cfg.get("hidden_act", "gelu"),
               rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
               **overrides)

  def to_hf(self) -> dict[str, Any]:
    """transformers' `PixtralVisionConfig` dict (`from_hf` reads it back)."""
    return dict(model_type="pixtral", hidden_size=self.hidden_size,
                intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                num_attention_heads=self.num_heads, head_dim=self.head_dim,
                patch_size=self.patch_size, image_size=self.image_size,
                num_channels=self.num_channels, hidden_act=self.activation,
                rope_parameters={"rope_type": "axial", "rope_theta": self.rope_theta})


PackedImages = dict  # {'patches': [N, C, P, P], 'positions': [N, 2], 'segment_ids': [N]}


def patch_grids(image_sizes, patch_size: int) -> np.ndarray:
  """`image_sizes [I, 2]` (height, width in pixels) -> patch grids `[I, 2]` (rows, cols), floored
  as transformers crops each image's convolution output."""
  sizes = np.asarray(image_sizes, np.int64).reshape(-1, 2)
  return sizes // patch_size


def pack_images(pixel_values, image_sizes, patch_size: int) -> PackedImages:
  """The processor's `pixel_values [I, C, H, W]` (each image padded at the bottom and right to
  the batch's largest) and `image_sizes [I, 2]` -> every image's patches in one sequence.

  Returns float32 `patches [N, C, P, P]` (each image's grid row-major, images in order), int32
  `positions [N, 2]` (row, column in the image's grid) and `segment_ids [N]` (the image index).
  """
  pixels = np.asarray(pixel_values, np.float32)
  if pixels.ndim != 4:
    raise ValueError(f"pixel_values must be [images, channels, height, width] as PixtralProcessor "
                     f"makes them, got shape {pixels.shape}")
  grids = patch_grids(image_sizes, patch_size)
  if grids.shape[0] != pixels.shape[0]:
    raise ValueError(f"image_sizes has {grids.shape[0]} rows for {pixels.shape[0]} images in "
                     "pixel_values")
  p, c = patch_size, pixels.shape[1]
  patches, positions, segments = [], [], []
  for i, (rows, cols) in enumerate(grids):
    if rows * p > pixels.shape[2] or cols * p > pixels.shape[3] or rows < 1 or cols < 1:
      raise ValueError(f"image {i}: image_sizes {tuple(int(s) for s in image_sizes[i])} does "
                       f"not fit pixel_values of {pixels.shape[2]}x{pixels.shape[3]} pixels with "
                       f"at least one {p}x{p} patch")
    image = pixels[i, :, :rows * p, :cols * p].reshape(c, rows, p, cols, p)
    patches.append(image.transpose(1, 3, 0, 2, 4).reshape(rows * cols, c, p, p))
    r, q = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    positions.append(np.stack([r.reshape(-1), q.reshape(-1)], axis=-1))
    segments.append(np.full(rows * cols, i))
  if not patches:
    return {"patches": np.zeros((0, c, p, p), np.float32),
            "positions": np.zeros((0, 2), np.int32), "segment_ids": np.zeros((0,), np.int32)}
  return {"patches": np.concatenate(patches),
          "positions": np.concatenate(positions).astype(np.int32),
          "segment_ids": np.concatenate(segments).astype(np.int32)}


class PixtralBlock(nn.Module):
  config: PixtralVisionConfig

  @nn.compact
  def __call__(self, x, mask, rope):
    """`x [B, N, D]`, `mask [B, 1, N, N]`, `rope` cos/sin `[B, N, head_dim]`."""
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = lambda name: RMSNorm(NORM_EPS, VISION_AXES.embed, param_dtype, name=name)
    h, _ = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads, head_dim=cfg.head_dim,
        axes=VISION_AXES, backend=cfg.attention_backend, dtype=dtype, param_dtype=param_dtype,
        name="attn",
    )(norm("attn_norm")(x), mask, rope)
    x = x + h
    h = GatedMlp(cfg.intermediate_size, cfg.activation, embed_axis="vit_embed",
                 hidden_axis="vit_mlp", dtype=dtype, param_dtype=param_dtype,
                 name="mlp")(norm("mlp_norm")(x))
    x = nn.with_logical_constraint(x + h, (ax.BATCH, ax.LENGTH, "activation_vit_embed"))
    return x, x


class PixtralVisionTransformer(nn.Module):
  """Packed patches -> the hidden states of every layer (transformers' `hidden_states`)."""

  config: PixtralVisionConfig

  @nn.compact
  def __call__(self, patches: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               num_layers: int | None = None) -> dict[str, jax.Array]:
    """`patches [B, N, C, P, P]`, `positions [B, N, 2]`, `segment_ids [B, N]` (as `pack_images`
    makes them, with a leading batch) -> `hidden_states [L+1, B, N, D]` (index 0 after `ln_pre`,
    i the output of layer i) and `last_hidden_state [B, N, D]`.

    `num_layers < L` runs only the first that many layers (a caller that reads an earlier one)
    and returns only `hidden_states [num_layers+1, B, N, D]`.
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    c, p = cfg.num_channels, cfg.patch_size
    if patches.shape[2:] != (c, p, p):
      raise ValueError(f"expected patches [B, N, {c}, {p}, {p}], got {patches.shape}")
    # The kernel keeps torch's Conv2d layout [D, C, P, P]; stride = kernel makes it a matmul.
    x = Einsum("BNcpq,Dcpq->BND", (cfg.hidden_size, c, p, p), ("vit_embed", None, None, None),
               dtype=dtype, param_dtype=param_dtype, name="patch_embed")(patches.astype(dtype))
    x = RMSNorm(NORM_EPS, "vit_embed", param_dtype, name="pre_norm")(x)  # [B, N, D]
    rope = rope_2d(positions, cfg.head_dim, cfg.rope_theta, "alternating")  # [B, N, head_dim]
    index = jnp.arange(x.shape[1])
    mask = attention_mask(index, index, causal=False, q_segment=segment_ids,
                          k_segment=segment_ids)  # [B, 1, N, N] block-diagonal
    run = cfg.num_layers if num_layers is None or self.is_initializing() else num_layers
    if not 0 <= run <= cfg.num_layers:
      raise ValueError(f"num_layers must be in [0, {cfg.num_layers}], got {num_layers}")
    if run == 0:
      return dict(hidden_states=x[None])
    stack = scan_layers(PixtralBlock, length=run, remat_policy=cfg.remat_policy,
                        in_axes=(nn.broadcast, nn.broadcast))
    if run < cfg.num_layers:
      stack = first_layers(stack, run)
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, "activation_vit_embed"))
    last, per_layer = stack(cfg, name="layers")(x, mask, rope)
    hidden_states = jnp.concatenate([x[None], per_layer], axis=0)  # [run+1, B, N, D]
    if run < cfg.num_layers:
      return dict(hidden_states=hidden_states)
    return dict(hidden_states=hidden_states, last_hidden_state=last)

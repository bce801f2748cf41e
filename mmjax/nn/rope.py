"""Rotary position embeddings in transformers' rotate-half convention.

Inverse frequencies are computed in float32, as transformers computes them, for the rope types
real checkpoints use: default, linear, dynamic (NTK), llama3 and yarn. Dynamic NTK depends on the
longest position in the call, so its frequencies are computed inside the traced function.
`rope_2d` is the vision towers' axial 2-D RoPE (Qwen-VL, Pixtral): a patch's row and column each
turn half of the frequencies.
"""

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """How rotary frequencies are derived (field names follow transformers' rope_parameters)."""

  theta: float = 10000.0
  rope_type: str = "default"
  factor: float = 1.0
  max_position_embeddings: int = 2048
  original_max_position_embeddings: int | None = None
  low_freq_factor: float = 1.0  # llama3
  high_freq_factor: float = 4.0  # llama3
  beta_fast: float = 32.0  # yarn
  beta_slow: float = 1.0  # yarn
  mscale: float | None = None  # yarn
  mscale_all_dim: float | None = None  # yarn
  attention_factor: float | None = None  # yarn
  truncate: bool = True  # yarn
  partial_rotary_factor: float = 1.0
  # M-RoPE (Qwen2-VL family): frequencies split into temporal / height / width sections that take
  # their angle from the matching row of `positions [3, B, T]`; Qwen3-VL interleaves them.
  mrope_section: tuple[int, ...] | None = None
  mrope_interleaved: bool = False

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"unsupported rope_type {self.rope_type!r}; supported: {ROPE_TYPES}")

  @classmethod
  def from_hf(cls, text_config: Mapping[str, Any]) -> "RopeConfig":
    """Reads transformers v5 `rope_parameters` or v4 `rope_theta` + `rope_scaling`."""
    params = dict(text_config.get("rope_parameters") or {})
    scaling = text_config.get("rope_scaling") or {}
    params = {**scaling, **params}
    theta = params.get("rope_theta", text_config.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "mrope":  # old Qwen2-VL spelling of default frequencies + mrope_section
      rope_type = "default"
    partial = params.get("partial_rotary_factor", text_config.get("partial_rotary_factor", 1.0))
    known = {f.name for f in dataclasses.fields(cls)}
    extra = {k: v for k, v in params.items() if k in known and v is not None}
    extra.pop("theta", None)
    if extra.get("mrope_section") is not None:
      extra["mrope_section"] = tuple(int(s) for s in extra["mrope_section"])
    return cls(
        **{
            **extra,
            "theta": float(theta),
            "rope_type": rope_type,
            "partial_rotary_factor": float(partial),
            "max_position_embeddings": int(text_config.get("max_position_embeddings", 2048)),
        }
    )

  def to_hf(self) -> dict[str, Any]:
    out = {"rope_type": self.rope_type, "rope_theta": self.theta}
    if self.rope_type != "default":
      out["factor"] = self.factor
    if self.rope_type in ("llama3", "yarn") and self.original_max_position_embeddings:
      out["original_max_position_embeddings"] = self.original_max_position_embeddings
    if self.rope_type == "llama3":
      out.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor)
    if self.rope_type == "yarn":
      out.update(beta_fast=self.beta_fast, beta_slow=self.beta_slow)
      for k in ("mscale", "mscale_all_dim", "attention_factor"):
        if getattr(self, k) is not None:
          out[k] = getattr(self, k)
    if self.mrope_section is not None:
      out["mrope_section"] = list(self.mrope_section)
      if self.mrope_interleaved:
        out["mrope_interleaved"] = True
    return out


def rotary_dim(cfg: RopeConfig, head_dim: int) -> int:
  return int(head_dim * cfg.partial_rotary_factor)


def _default_inv_freq(base: float, dim: int) -> np.ndarray:
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  return (np.float32(1.0) / (np.float32(base) ** exponents)).astype(np.float32)


def _llama3_inv_freq(cfg: RopeConfig, dim: int) -> np.ndarray:
  inv_freq = _default_inv_freq(cfg.theta, dim)
  old_len = cfg.original_max_position_embeddings
  low_wavelen = old_len / cfg.low_freq_factor
  high_wavelen = old_len / cfg.high_freq_factor
  wavelen = (np.float32(2 * math.pi) / inv_freq).astype(np.float32)
  scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(cfg.factor), inv_freq)
  smooth = (old_len / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
  smoothed = (1 - smooth) * scaled / np.float32(cfg.factor) + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn_inv_freq(cfg: RopeConfig, dim: int) -> tuple[np.ndarray, float]:
  base, factor = cfg.theta, cfg.factor
  original = cfg.original_max_position_embeddings or cfg.max_position_embeddings

  def get_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

  attention = cfg.attention_factor
  if attention is None:
    if cfg.mscale and cfg.mscale_all_dim:
      attention = float(get_mscale(factor, cfg.mscale) / get_mscale(factor, cfg.mscale_all_dim))
    else:
      attention = get_mscale(factor)

  def correction_dim(rotations):
    return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

  low, high = correction_dim(cfg.beta_fast), correction_dim(cfg.beta_slow)
  if cfg.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoid a division by zero in the ramp
  pos_freqs = (np.float32(base) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))
  extrapolation = np.float32(1.0) / pos_freqs
  interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation_weight = (1 - ramp).astype(np.float32)
  inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
  return inv_freq.astype(np.float32), float(attention)


def inverse_frequencies(cfg: RopeConfig, head_dim: int, positions: jax.Array | None = None):
  """Returns (`inv_freq [dim/2]`, attention scaling) for this rope type."""
  dim = rotary_dim(cfg, head_dim)
  if cfg.rope_type == "default":
    return jnp.asarray(_default_inv_freq(cfg.theta, dim)), 1.0
  if cfg.rope_type == "linear":
    return jnp.asarray(_default_inv_freq(cfg.theta, dim) / np.float32(cfg.factor)), 1.0
  if cfg.rope_type == "llama3":
    return jnp.asarray(_llama3_inv_freq(cfg, dim)), 1.0
  if cfg.rope_type == "yarn":
    inv_freq, scaling = _yarn_inv_freq(cfg, dim)
    return jnp.asarray(inv_freq), scaling
  # dynamic NTK: the base grows with the longest position seen in this call.
  assert positions is not None, "dynamic rope needs the positions"
  mpe = cfg.max_position_embeddings
  seq_len = jnp.maximum(jnp.max(positions) + 1, mpe).astype(jnp.float32)
  base = cfg.theta * ((cfg.factor * seq_len / mpe) - (cfg.factor - 1)) ** (dim / (dim - 2))
  exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
  return 1.0 / (base.astype(jnp.float32) ** exponents), 1.0


def mrope_axis(cfg: RopeConfig, num_freqs: int) -> np.ndarray:
  """Which row of `positions [3, B, T]` (0 temporal, 1 height, 2 width) drives each frequency."""
  sections = cfg.mrope_section
  if sum(sections) != num_freqs:
    raise ValueError(f"mrope_section {list(sections)} sums to {sum(sections)}, but the rotary "
                     f"dimension has {num_freqs} frequencies")
  if not cfg.mrope_interleaved:  # contiguous sections [t..., h..., w...]
    return np.concatenate([np.full(s, i % 3) for i, s in enumerate(sections)]).astype(np.int32)
  axis = np.zeros(num_freqs, np.int32)  # [t h w t h w ... t t]: h, w until their sections run out
  for row in (1, 2):
    axis[row:sections[row] * 3:3] = row
  return axis


def rope_cos_sin(cfg: RopeConfig, head_dim: int, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`positions [B, T]` (or `[3, B, T]` with M-RoPE) -> float32 `cos, sin [B, T, rotary_dim]`."""
  inv_freq, scaling = inverse_frequencies(cfg, head_dim, positions)
  if positions.ndim == 3:
    if cfg.mrope_section is None:
      raise ValueError(f"positions {positions.shape} are 3-D but the rope config has no mrope_section")
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, dim/2]
    axis = jnp.asarray(mrope_axis(cfg, inv_freq.shape[0]))
    freqs = jnp.take_along_axis(freqs, axis[None, None, None, :], axis=0)[0]  # [B, T, dim/2]
  else:
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, dim/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, dim]
  return jnp.cos(emb) * scaling, jnp.sin(emb) * scaling


AXIAL_LAYOUTS = ("shared", "alternating")


def axial_frequencies(head_dim: int, theta: float, layout: str) -> tuple[np.ndarray, np.ndarray]:
  """float32 inverse frequencies `(rows [head_dim/4], cols [head_dim/4])` of a 2-D RoPE.

  'shared' (Qwen-VL): rows and columns turn the same frequencies, those of a 1-D RoPE over half
  the head. 'alternating' (Pixtral): the frequencies of a 1-D RoPE over the whole head, dealt
  alternately to rows (`f[0::2]`) and columns (`f[1::2]`).
  """
  if layout == "shared":
    f = _default_inv_freq(theta, head_dim // 2)
    return f, f
  if layout == "alternating":
    f = _default_inv_freq(theta, head_dim)
    return f[0::2], f[1::2]
  raise ValueError(f"unknown 2-D RoPE layout {layout!r}; known: {AXIAL_LAYOUTS}")


def rope_2d(positions: jax.Array, head_dim: int, theta: float,
            layout: str) -> tuple[jax.Array, jax.Array]:
  """`positions [..., N, 2]` (row, column) -> float32 `cos, sin [..., N, head_dim]`.

  The angles are `[row * rows_f, col * cols_f]` (a quarter of the head each) and the rotate-half
  layout repeats them: `[row, col, row, col]`.
  """
  rows, cols = axial_frequencies(head_dim, theta, layout)
  pos = positions.astype(jnp.float32)
  freqs = jnp.concatenate([pos[..., 0:1] * jnp.asarray(rows), pos[..., 1:2] * jnp.asarray(cols)],
                          axis=-1)  # [..., N, head_dim/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)  # [..., N, head_dim]
  return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """`x [B, T, N, H]` rotated by `cos, sin [B, T, R]` on its first R features."""
  rot = cos.shape[-1]
  cos = cos[:, :, None, :].astype(x.dtype)  # [B, T, 1, R]
  sin = sin[:, :, None, :].astype(x.dtype)
  x_rot, x_pass = x[..., :rot], x[..., rot:]
  out = x_rot * cos + _rotate_half(x_rot) * sin
  return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out

"""Fractional position ids (Idefics2's SigLIP, after NaViT): an image of any size reuses a
`grid x grid` position table by placing its patches at fractions of its own extent.

Row i of an image with n valid patch rows sits at the fraction `i * (1/n)` (float32, clamped
below 1), whose bucket among the boundaries `arange(1/grid, 1, 1/grid)` is its table row (the
same for columns); the id is `row * grid + col`, and 0 for padding patches. transformers builds
the boundaries with `torch.arange` and buckets with `torch.bucketize(right=True)`.

The buckets are exact float32 comparisons, and a fraction often lies within one ulp of a
boundary (`i/n` against `k/grid` whenever `n` divides into `grid`'s steps), so an ulp moves a
patch to another table row. Two things make that exact here:

- the boundaries are torch's CPU `arange` value for value (`torch_arange_f32`), not the nearest
  float32 of each `k/grid`: the two differ in the last ulp for many grids (19, 20, 22, ...);
- the fractions are computed on the host in numpy (IEEE float32, as torch's CPU kernels) for
  every (valid count, index) pair the input's shape allows, and the model gathers from that
  table, so no accelerator's approximate division ever sees them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# torch's CPU `arange` fills 2 vectors of 8 float32 lanes per step (AVX2 / default width; the
# kernel has no AVX-512 variant), each lane `base + j*step` from a float32 base; the tail that
# does not fill 16 is computed element by element. (Checked against torch for grids 1..399.)
_LANES, _CHUNK = 8, 16


def torch_arange_f32(start: float, end: float, step: float) -> np.ndarray:
  """`torch.arange(start, end, step)` (float32, CPU) bit for bit."""
  count = int(math.ceil((end - start) / step))  # torch sizes it in double
  out = np.empty(max(count, 0), np.float32)
  vectorised = count // _CHUNK * _CHUNK
  for base_index in range(0, vectorised, _LANES):
    base = np.float64(np.float32(start + step * base_index))
    out[base_index:base_index + _LANES] = base + step * np.arange(_LANES, dtype=np.float64)
  tail = np.arange(vectorised, count, dtype=np.float64)
  out[vectorised:] = start + step * tail
  return out


def bucket_boundaries(grid: int) -> np.ndarray:
  """transformers' `arange(1/grid, 1, 1/grid)`: `[grid - 1]` (or `[grid]`, when rounding adds
  one just below 1) float32."""
  return torch_arange_f32(1 / grid, 1.0, 1 / grid)


def bucket_table(grid: int, length: int) -> np.ndarray:
  """`[length + 1, length]` int32: entry (n, i) is the table row (column) of patch row (column)
  i of an image with n valid ones, for every n the input can hold (0 included, as torch's
  `1/0` would run it)."""
  counts = np.arange(length + 1, dtype=np.float32)
  with np.errstate(divide="ignore", invalid="ignore"):
    step = np.float32(1.0) / counts  # [n]
    fractions = np.arange(length, dtype=np.float32)[None, :] * step[:, None]  # [n, i]
  fractions = np.minimum(fractions, np.float32(1.0 - 1e-6))  # NaN (n = 0, i = 0) stays NaN
  return np.searchsorted(bucket_boundaries(grid), fractions, side="right").astype(np.int32)


def fractional_position_ids(patch_mask: jax.Array, grid: int) -> jax.Array:
  """`patch_mask [B, Gh, Gw]` bool (True: a real patch) -> position ids `[B, Gh*Gw]` int32 into a
  `grid x grid` table. An image's valid extent is counted along its first column (rows) and
  first row (columns), as transformers counts it."""
  b, gh, gw = patch_mask.shape
  rows = jnp.sum(patch_mask[:, :, 0], axis=1)  # [B] valid patch rows
  cols = jnp.sum(patch_mask[:, 0, :], axis=1)  # [B] valid patch columns
  row_ids = jnp.asarray(bucket_table(grid, gh))[rows]  # [B, Gh]
  col_ids = jnp.asarray(bucket_table(grid, gw))[cols]  # [B, Gw]
  ids = row_ids[:, :, None] * grid + col_ids[:, None, :]  # [B, Gh, Gw]
  return jnp.where(patch_mask, ids, 0).reshape(b, gh * gw)

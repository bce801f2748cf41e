"""Where LLaVA-OneVision's image and video placeholders take their features from, computed on the
host from the processor's arrays.

Every placeholder is a bilinear mix of four rows of `concat(tile features [N * g * g, D],
image_newline [1, D])`: `index [F, 4]` names the rows (top-left, top-right, bottom-left,
bottom-right) and `weights [F, 4]` the column weights `(w0, w1)` then the row weights `(h0, h1)`;
a placeholder is `(w0 x0 + w1 x1) h0 + (w0 x2 + w1 x3) h1`. A feature taken as it is has the
weights `(1, 0, 1, 0)`, which return it exactly. Two places mix features, both as torch's
`interpolate(mode="bilinear")` (half-pixel centres, no antialias):

* `anyres_max_N`: an image's unpadded grid of `R x C` features larger than N tiles' worth
  (`sqrt(R C / (N g^2)) > 1.1`) shrinks to `int(R // ratio) x int(C // ratio)`;
* videos: every frame's `g x g` features pool to `ceil(g / 2)` a side.

Tiles are laid out images first (each image's real tiles, the base view first), then every video
frame, in the order the model runs them through the tower.

The counts alone (`tokens_for`, `video_tokens`) live with the preprocessing
(`mmjax.data.preprocess.onevision`).
"""

import math

import numpy as np

from mmjax.data.preprocess.anyres import unpadded_grid
from mmjax.data.preprocess.onevision import anyres_grid, shrunk

COPY = np.array([1.0, 0.0, 1.0, 0.0], np.float32)  # weights that take x0 as it is


def taps(n_in: int, n_out: int):
  """1-D bilinear taps of torch's `interpolate` (align_corners=False) from `n_in` to `n_out`:
  `(i0, i1, w0, w1)`, each `[n_out]`. The source coordinate `scale * (o + 0.5) - 0.5` is rounded
  once (fused multiply-add, as torch's CPU kernel computes it), in float32."""
  scale = np.float32(n_in) / np.float32(n_out)
  centre = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
  src = (np.float64(scale) * np.float64(centre) - 0.5).astype(np.float32)  # one rounding
  src = np.maximum(src, np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
  w0 = (np.float32(1) - w1).astype(np.float32)
  return i0, i0 + (i0 < n_in - 1), w0, w1


def bilinear(rows: np.ndarray, out_h: int, out_w: int):
  """`rows [H, W]` (feature rows of a grid) resized to `out_h x out_w` -> `index [out_h * out_w,
  4]`, `weights [.., 4]` in the layout of this module."""
  h0, h1, a0, a1 = taps(rows.shape[0], out_h)
  c0, c1, b0, b1 = taps(rows.shape[1], out_w)
  index = np.stack([rows[h0][:, c0], rows[h0][:, c1], rows[h1][:, c0], rows[h1][:, c1]], -1)
  weights = np.stack(np.broadcast_arrays(b0[None], b1[None], a0[:, None], a1[:, None]), -1)
  return index.reshape(-1, 4), weights.reshape(-1, 4).astype(np.float32)


def copies(rows: np.ndarray):
  """Feature rows taken as they are: `index [F, 4]`, `weights [F, 4]`."""
  rows = np.asarray(rows, np.int64).reshape(-1)
  return np.repeat(rows[:, None], 4, 1), np.tile(COPY, (rows.shape[0], 1))


def image_layout(height, width, first, g, pinpoints, side, max_tiles, newline):
  """An image cut into tiles (AnyRes; its tiles start at tile `first`): the base view, then the
  unpadded grid (shrunk past `max_tiles`), each row ended by the newline row."""
  rows, cols = anyres_grid(height, width, pinpoints, side)
  per_tile = g * g
  parts = [copies(first * per_tile + np.arange(per_tile))]
  top, kept_rows, left, kept_cols = unpadded_grid(height, width, rows * g, cols * g)
  y = np.arange(top, top + kept_rows)[:, None]  # [R, 1] feature rows of the whole grid
  x = np.arange(left, left + kept_cols)[None, :]  # [1, C]
  grid = (first + 1 + (y // g) * cols + x // g) * per_tile + (y % g) * g + x % g  # [R, C]
  size = shrunk(kept_rows, kept_cols, g, max_tiles)
  if size is None:
    index, weights = copies(grid)
    out_rows, out_cols = kept_rows, kept_cols
  else:
    out_rows, out_cols = size
    index, weights = bilinear(grid, out_rows, out_cols)
  nl_index, nl_weights = copies(np.full((out_rows, 1), newline))
  parts.append((  # each row's features, then the newline
      np.concatenate([index.reshape(out_rows, out_cols, 4), nl_index[:, None]], 1).reshape(-1, 4),
      np.concatenate([weights.reshape(out_rows, out_cols, 4), nl_weights[:, None]],
                     1).reshape(-1, 4)))
  return parts


def feature_layout(image_sizes, multi, videos, g: int, pinpoints, side: int, max_tiles: int):
  """Tiles per image, and the (index, weights) of the image and of the video placeholders.

  `image_sizes [I, 2]` (height, width of the originals), `multi [I]` (the image shares its row:
  no AnyRes), `videos`: frames per video.
  """
  per_tile = g * g
  counts = [1 if m else 1 + int(np.prod(anyres_grid(int(h), int(w), pinpoints, side)))
            for (h, w), m in zip(image_sizes, multi)]
  total = sum(counts) + sum(videos)
  newline = total * per_tile
  image_parts, first = [], 0
  for (h, w), m, n in zip(image_sizes, multi, counts):
    if m:
      image_parts += [copies(first * per_tile + np.arange(per_tile)), copies([newline])]
    else:
      image_parts += image_layout(int(h), int(w), first, g, pinpoints, side, max_tiles, newline)
    first += n
  video_parts, p = [], math.ceil(g / 2)
  frame_rows = np.arange(per_tile).reshape(g, g)
  pool_index, pool_weights = bilinear(frame_rows, p, p)
  for frames in videos:
    for _ in range(frames):
      video_parts.append((pool_index + first * per_tile, pool_weights))
      first += 1
    video_parts.append(copies([newline]))
  return counts, _join(image_parts), _join(video_parts)


def _join(parts):
  if not parts:
    return np.zeros((0, 4), np.int32), np.zeros((0, 4), np.float32)
  return (np.concatenate([i for i, _ in parts]).astype(np.int32),
          np.concatenate([w for _, w in parts]).astype(np.float32))

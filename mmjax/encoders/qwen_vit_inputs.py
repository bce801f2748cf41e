"""Host-side index arrays for the packed Qwen-VL ViT, computed from `grid_thw` with numpy.

Images and videos of different sizes are packed into one patch sequence. Everything that depends
on the grids (2-D RoPE positions, which frame and which window each patch belongs to, Qwen3-VL's
interpolation taps into the learned position table) is computed here, once per batch on the host,
so the jitted encoder only sees arrays of a fixed length. Patches follow transformers' order:
per image / video, per frame, merge blocks row-major, the `merge x merge` patches of a block
consecutive. Training batches hold rows of patches whose grids are only known under jit;
`row_vision_inputs` computes the same arrays there with jax.numpy.
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

PAD_SEGMENT = -1  # padding patches form their own segment (they attend only to each other)


def _block_major(h: int, w: int, m: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column of every patch of an `h x w` frame, in merge-block-major order."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  shape = (h // m, m, w // m, m)
  return (rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1),
          cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1))


def _check_grid(grid_thw) -> np.ndarray:
  grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  if (grid <= 0).any():
    raise ValueError(f"grid_thw entries must be positive, got {grid.tolist()}")
  return grid


def _window_ids(h: int, w: int, m: int, window: int) -> np.ndarray:
  """Qwen2.5-VL: window of each patch of one frame (`window` merged tokens on a side)."""
  rows, cols = _block_major(h, w, m)
  per_row = -(-(w // m) // window)  # windows across
  return (rows // m // window) * per_row + (cols // m // window)


def _interp_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear, align_corners=True taps into a `side`-long table for positions on a `size` axis.

  Float32 throughout, as transformers computes them.
  """
  src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
  floor = np.floor(src)
  offsets = np.arange(2)
  taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
  distance = np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32))
  weights = np.clip(np.float32(1) - distance, 0, None).astype(np.float32)
  return taps, weights


def packed_vision_inputs(
    grid_thw: Sequence[Sequence[int]] | np.ndarray,
    *,
    merge_size: int = 2,
    window: int | None = None,
    pos_embed_side: int | None = None,
    num_patches: int | None = None,
) -> dict[str, np.ndarray]:
  """Index arrays for `sum(t * h * w)` packed patches (padded to `num_patches` when given).

  Args:
    grid_thw: `[I, 3]` temporal, height and width patch counts of each image or video.
    merge_size: the patch merger's block side.
    window: Qwen2.5-VL window side in merged tokens (`window_size // merge // patch`); else None.
    pos_embed_side: Qwen3-VL learned position table side (`sqrt(num_position_embeddings)`).
    num_patches: pad the sequence to this many patches (fixed shapes under jit).
  Returns:
    `positions [N, 2]` (row, column) for the 2-D RoPE, `segment_ids [N]` (one per frame: patches
    of different images or frames never attend to each other), `window_ids [N]` (Qwen2.5-VL; the
    frame's windows), and for Qwen3-VL `pos_index [N, 4]`, `pos_weight [N, 4]`.
  """
  grid = _check_grid(grid_thw)
  m = merge_size
  positions, segments, windows, pos_index, pos_weight = [], [], [], [], []
  segment = window_offset = 0
  for t, h, w in grid.tolist():
    if h % m or w % m:
      raise ValueError(f"grid {h}x{w} is not a multiple of the merge size {m}")
    rows, cols = _block_major(h, w, m)
    frame_windows = _window_ids(h, w, m, window) if window else np.zeros(h * w, np.int64)
    if pos_embed_side:
      h_taps, h_w = _interp_taps(rows, h, pos_embed_side)
      w_taps, w_w = _interp_taps(cols, w, pos_embed_side)
      index = (h_taps[:, :, None] * pos_embed_side + w_taps[:, None, :]).reshape(-1, 4)
      weight = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
    for _ in range(t):
      positions.append(np.stack([rows, cols], -1))
      segments.append(np.full(h * w, segment))
      windows.append(frame_windows + window_offset)
      window_offset += int(frame_windows.max()) + 1
      segment += 1
      if pos_embed_side:
        pos_index.append(index)
        pos_weight.append(weight)
  out = {
      "positions": np.concatenate(positions).astype(np.int32),
      "segment_ids": np.concatenate(segments).astype(np.int32),
      "window_ids": np.concatenate(windows).astype(np.int32),
  }
  if pos_embed_side:
    out["pos_index"] = np.concatenate(pos_index).astype(np.int32)
    out["pos_weight"] = np.concatenate(pos_weight).astype(np.float32)
  n = out["positions"].shape[0]
  if num_patches is not None:
    if num_patches < n or num_patches % (m * m):
      raise ValueError(f"cannot pad {n} patches to {num_patches} (must be >= and a multiple of "
                       f"{m * m})")
    pad = num_patches - n
    fills = {"segment_ids": PAD_SEGMENT, "window_ids": PAD_SEGMENT}
    out = {k: np.concatenate([v, np.full((pad, *v.shape[1:]), fills.get(k, 0), v.dtype)])
           for k, v in out.items()}
  return out


def num_merged_tokens(grid_thw, merge_size: int = 2) -> int:
  """How many decoder tokens (placeholders) the images / videos of `grid_thw` take."""
  grid = _check_grid(grid_thw)
  return int(grid.prod(-1).sum()) // merge_size**2


def row_vision_inputs(grid_thw, num_patches: int, *, merge_size: int = 2,
                      window: int | None = None, pos_embed_side: int | None = None) -> dict:
  """`packed_vision_inputs` for rows of a training batch, computed with jax.numpy under jit.

  Args:
    grid_thw: `[B, M, 3]` grids of each row's images in order, zeros for unused slots; a row's
      patches fill its `num_patches` slots from the start in the same order (the data pipeline's
      layout), the rest is padding.
    num_patches: S, the patch slots per row.
  Returns:
    The arrays of `packed_vision_inputs` per row, `[B, S, ...]`, padding as there. Segment and
    window ids are numbered differently (a frame's id is the slot of its first patch) but group
    the same patches.
  """
  m = merge_size
  grid = jnp.asarray(grid_thw, jnp.int32)  # [B, M, 3]
  sizes = jnp.prod(grid, axis=-1)  # [B, M] patches per image
  ends = jnp.cumsum(sizes, axis=-1)
  slot = jnp.arange(num_patches)  # [S]
  image = jnp.sum(ends[:, None, :] <= slot[None, :, None], axis=-1)  # [B, S] image of each slot
  valid = slot[None] < ends[:, -1:]  # [B, S]
  image = jnp.minimum(image, grid.shape[1] - 1)
  h, w = (jnp.maximum(jnp.take_along_axis(grid[..., k], image, axis=1), m) for k in (1, 2))
  local = slot[None] - jnp.take_along_axis(ends - sizes, image, axis=1)  # index in its image
  q = local % (h * w)  # index in its frame, merge-block-major
  block, inner = q // (m * m), q % (m * m)
  rows = (block // (w // m)) * m + inner // m
  cols = (block % (w // m)) * m + inner % m
  frame = slot[None] - q  # slot of the frame's first patch
  out = {"positions": jnp.where(valid[..., None], jnp.stack([rows, cols], -1), 0),
         "segment_ids": jnp.where(valid, frame, PAD_SEGMENT)}
  if window:
    per_row = -(-(w // m) // window)
    windows = (rows // m // window) * per_row + cols // m // window  # < patches of the frame
    out["window_ids"] = jnp.where(valid, frame + windows, PAD_SEGMENT)
  else:
    out["window_ids"] = out["segment_ids"]
  if pos_embed_side:
    def taps(index, size):  # `_interp_taps`: float32, bilinear, align_corners=True
      src = index.astype(jnp.float32) * jnp.float32(pos_embed_side - 1) / \
          jnp.maximum(size - 1, 1).astype(jnp.float32)
      floor = jnp.floor(src)
      offsets = jnp.arange(2)
      tap = jnp.clip(floor.astype(jnp.int32)[..., None] + offsets, 0, pos_embed_side - 1)
      weight = jnp.clip(1 - jnp.abs(src[..., None] - floor[..., None] - offsets), 0, None)
      return tap, weight.astype(jnp.float32)
    (h_tap, h_weight), (w_tap, w_weight) = taps(rows, h), taps(cols, w)
    index = (h_tap[..., :, None] * pos_embed_side + w_tap[..., None, :]).reshape(*rows.shape, 4)
    weight = (h_weight[..., :, None] * w_weight[..., None, :]).reshape(*rows.shape, 4)
    out["pos_index"] = jnp.where(valid[..., None], index, 0).astype(jnp.int32)
    out["pos_weight"] = jnp.where(valid[..., None], weight, 0)
  return {k: v.astype(jnp.float32 if k == "pos_weight" else jnp.int32) for k, v in out.items()}

"""Qwen-VL 3-D M-RoPE position ids, computed on the host as transformers' `get_rope_index` does.

Text tokens count up by one on all three axes. A run of image / video placeholder tokens takes a
`(t, h/2, w/2)` grid: temporal, row and column indices offset by the position where it starts,
after which text resumes at `start + max(h, w) / 2`. Padding (attention mask 0) is skipped and
left at 0. Qwen2.5-VL spaces video frames by `tokens_per_second * seconds_per_grid`; Qwen3-VL
gives every video frame its own grid (frames are separated by timestamp text).
"""

import itertools

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2


def mm_token_types(input_ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
  """What the Qwen processors return as `mm_token_type_ids`: 0 text, 1 image, 2 video."""
  ids = np.asarray(input_ids)
  return np.where(ids == image_token_id, IMAGE, np.where(ids == video_token_id, VIDEO, TEXT))


def _grid_positions(start: int, grid, merge: int, time_interval: float) -> np.ndarray:
  t, h, w = int(grid[0]), int(grid[1]) // merge, int(grid[2]) // merge
  # float32 product truncated toward zero, as torch's `(arange * interval).long()`
  temporal = (np.arange(t, dtype=np.float32) * np.float32(time_interval)).astype(np.int64)
  tt, hh, ww = np.meshgrid(temporal, np.arange(h) + start, np.arange(w) + start, indexing="ij")
  out = np.stack([tt, hh, ww]).reshape(3, -1)
  out[0] += start
  return out


def rope_index(
    input_ids: np.ndarray,
    mm_token_type_ids: np.ndarray,
    *,
    kind: str,
    merge_size: int = 2,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    second_per_grid_ts: np.ndarray | None = None,
    tokens_per_second: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns `positions [3, B, T]` int32 and `deltas [B, 1]` (next position minus length)."""
  ids = np.asarray(input_ids)
  types = np.asarray(mm_token_type_ids)
  b, t = ids.shape
  mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
  videos = None if video_grid_thw is None else np.asarray(video_grid_thw).reshape(-1, 3)
  if kind == "qwen3_vl" and videos is not None:
    videos = np.repeat(videos, videos[:, 0], axis=0)
    videos[:, 0] = 1
  grids = {IMAGE: iter(np.asarray(image_grid_thw).reshape(-1, 3)) if image_grid_thw is not None
           else iter(()), VIDEO: iter(videos) if videos is not None else iter(())}
  seconds = iter(np.asarray(second_per_grid_ts).reshape(-1).tolist() if second_per_grid_ts is not None
                 else [1] * t)
  positions = np.zeros((3, b, t), np.int64)
  deltas = np.zeros((b, 1), np.int64)
  for row in range(b):
    row_types = types[row][mask[row]]
    parts, current = [], 0
    for kind_id, group in itertools.groupby(row_types.tolist()):
      length = len(list(group))
      if kind_id == TEXT:
        parts.append(np.broadcast_to(np.arange(length) + current, (3, length)))
        current += length
        continue
      try:
        grid = next(grids[kind_id])
      except StopIteration:
        raise ValueError(f"row {row} has more {'image' if kind_id == IMAGE else 'video'} "
                         "placeholder runs than grids in *_grid_thw") from None
      interval = 1.0
      if kind == "qwen2_5_vl" and kind_id == VIDEO:
        interval = np.float32(tokens_per_second) * np.float32(next(seconds))
      pos = _grid_positions(current, grid, merge_size, interval)
      if pos.shape[1] != length:
        raise ValueError(f"row {row}: a run of {length} placeholder tokens does not match grid "
                         f"{list(map(int, grid))} ({pos.shape[1]} tokens after merging)")
      parts.append(pos)
      current += max(int(grid[1]), int(grid[2])) // merge_size
    row_pos = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), np.int64)
    positions[:, row, mask[row]] = row_pos
    deltas[row, 0] = (row_pos.max() + 1 if row_pos.size else 0) - row_pos.shape[1]
  return positions.astype(np.int32), deltas

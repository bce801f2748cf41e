"""InternVL dynamic tiling: a grid of square tiles whose aspect best matches the image, + thumbnail.

Matches transformers' ``GotOcr2ImageProcessorPil`` with ``crop_to_patches=True`` (the processor
InternVL uses in transformers): grids (cols, rows) with min <= cols*rows <= max are tried in order
of tile count; the closest aspect ratio wins, ties go to the larger grid while the image area
exceeds half the grid's area. The image is resized (no aspect keeping) to the grid, cut into tiles
row-major, and a thumbnail of the whole image is appended when there is more than one tile.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common


@functools.lru_cache(maxsize=16)
def _grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
  grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
           if min_tiles <= c * r <= max_tiles]
  return tuple(sorted(grids, key=lambda g: g[0] * g[1]))  # Stable: keeps (c, r) order on ties.


def best_grid(height: int, width: int, tile_h: int, tile_w: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
  """(columns, rows) of the tile grid for an image of (height, width)."""
  aspect, area = width / height, width * height
  best, best_diff = (1, 1), float('inf')
  for cols, rows in _grids(min_tiles, max_tiles):
    diff = abs(aspect - cols / rows)
    if diff < best_diff:
      best, best_diff = (cols, rows), diff
    elif diff == best_diff and area > 0.5 * tile_h * tile_w * cols * rows:
      best = (cols, rows)
  return best


def num_tiles(height: int, width: int, cfg) -> int:
  """Tiles (thumbnail included) an image of this size becomes."""
  if cfg.max_tiles <= 1:
    return 1
  cols, rows = best_grid(height, width, *cfg.size, cfg.min_tiles, cfg.max_tiles)
  n = cols * rows
  return n + 1 if (n > 1 and cfg.use_thumbnail) else n


def tile_size(cfg) -> tuple[int, int]:
  return cfg.size


def num_tokens(height: int, width: int, cfg) -> int:
  """Every tile (the thumbnail included) gives the same tokens."""
  th, tw = cfg.size
  return num_tiles(height, width, cfg) * (th // cfg.patch_size // cfg.merge_size) * (
      tw // cfg.patch_size // cfg.merge_size)


def hf_settings(cfg) -> dict:
  """GotOcr2ImageProcessor's settings (``crop_to_patches``: dynamic tiles)."""
  height, width = cfg.size
  return dict(image_processor_type='GotOcr2ImageProcessor', size={'height': height, 'width': width},
              crop_to_patches=True, min_patches=cfg.min_tiles, max_patches=cfg.max_tiles)


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns pixels [n_tiles, H, W, 3] float32 (thumbnail last) and {'num_tiles': n}."""
  tile_h, tile_w = cfg.size
  if cfg.max_tiles <= 1:
    tiles = [np.asarray(common.resize(image, tile_h, tile_w, cfg.resample))]
  else:
    w, h = image.size
    cols, rows = best_grid(h, w, tile_h, tile_w, cfg.min_tiles, cfg.max_tiles)
    grid = np.asarray(common.resize(image, rows * tile_h, cols * tile_w, cfg.resample))
    tiles = [grid[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w]
             for r in range(rows) for c in range(cols)]
    if len(tiles) > 1 and cfg.use_thumbnail:
      tiles.append(np.asarray(common.resize(image, tile_h, tile_w, cfg.resample)))
  pixels = common.normalize(np.stack(tiles), cfg.mean, cfg.std, cfg.rescale_factor)  # [n, H, W, 3]
  return pixels, {'num_tiles': len(tiles)}

"""LLaVA-NeXT "AnyRes": a base view plus tiles of the image at the best grid resolution.

Matches ``LlavaNextImageProcessorPil``: choose the pinpoint resolution that keeps the most
effective pixels and wastes the fewest, resize keeping the aspect ratio (ceil on the free side),
zero-pad centered to the pinpoint and cut it into square tiles of the crop height, row-major; the
base view is the whole image resized (without keeping aspect) to the `size` square and comes
first. Every view then takes the processor's resize and center crop (no-ops when the tiles
already have the crop size, as in the released checkpoints).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common


def select_best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
  """(h, w) of the pinpoint maximizing effective resolution, then minimizing waste."""
  best, best_effective, best_waste = None, 0, float('inf')
  for ph, pw in pinpoints:
    scale = min(pw / width, ph / height)
    effective = min(int(width * scale) * int(height * scale), width * height)
    waste = ph * pw - effective
    if effective > best_effective or (effective == best_effective and waste < best_waste):
      best, best_effective, best_waste = (int(ph), int(pw)), effective, waste
  return best


def fit_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
  """Size after an aspect-preserving resize into (target_h, target_w); the free side is ceiled."""
  scale_w, scale_h = target_w / width, target_h / height
  if scale_w < scale_h:
    return min(math.ceil(height * scale_w), target_h), target_w
  return target_h, min(math.ceil(width * scale_h), target_w)


def tile_side(cfg) -> int:
  """Side of the square tiles the padded image is cut into: the crop height (else `size`'s)."""
  if cfg.crop_size:
    return cfg.crop_size[0]
  return cfg.size[0] if cfg.size else cfg.shortest_edge


def view_size(cfg) -> tuple[int, int]:
  """(h, w) of every view the processor returns (its crop size, else its resize target)."""
  if cfg.crop_size:
    return tuple(cfg.crop_size)
  return tuple(cfg.size) if cfg.size else (cfg.shortest_edge, cfg.shortest_edge)


def unpadded_grid(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
  """(top, rows, left, cols): the part of a `grid_h x grid_w` feature grid an image of (height,
  width) covers once its centered zero padding is cut off, rounded as transformers'
  `unpad_image` does (`int(round(x, 7))`, then equal margins of the floored half)."""
  if width / height > grid_w / grid_h:
    new_h = int(round(height * (grid_w / width), 7))
    top = (grid_h - new_h) // 2
    return top, grid_h - 2 * top, 0, grid_w
  new_w = int(round(width * (grid_h / height), 7))
  left = (grid_w - new_w) // 2
  return 0, grid_h, left, grid_w - 2 * left


def num_tokens(height: int, width: int, cfg) -> int:
  """Image tokens LLaVA-NeXT produces: base grid + unpadded tile features + one newline per row
  (as `LlavaNextProcessor` counts them without the class token)."""
  tile_h, tile_w = view_size(cfg)
  best_h, best_w = select_best_resolution(height, width, cfg.grid_pinpoints)
  grid_h, grid_w = tile_h // cfg.patch_size, tile_w // cfg.patch_size
  _, rows, _, cols = unpadded_grid(height, width, grid_h * (best_h // tile_h),
                                   grid_w * (best_w // tile_w))
  return grid_h * grid_w + rows * cols + rows


def feature_sources(height: int, width: int, grid: int, tile: int,
                    pinpoints: Sequence[Sequence[int]]) -> np.ndarray:
  """Where each placeholder token of an image of (height, width) takes its feature from: int32
  `[tokens, 2]` of (tile, feature within the tile), tile 0 the base view and 1.. the grid
  row-major, tile -1 for the `image_newline` ending each grid row (feature 0). `grid` is one
  tile's features per side, `tile` its side in pixels. The layout `LlavaNextProcessor` counts
  and transformers' `pack_image_features` builds: the base view, then the unpadded grid."""
  best_h, best_w = select_best_resolution(height, width, pinpoints)
  rows, cols = best_h // tile, best_w // tile
  base = np.stack([np.zeros(grid * grid, np.int64), np.arange(grid * grid)], axis=-1)
  top, kept_rows, left, kept_cols = unpadded_grid(height, width, rows * grid, cols * grid)
  y = np.arange(top, top + kept_rows)[:, None]  # [R, 1] feature rows of the whole grid
  x = np.arange(left, left + kept_cols)[None, :]  # [1, C]
  tiles = np.broadcast_to(1 + (y // grid) * cols + x // grid, (kept_rows, kept_cols))
  within = np.broadcast_to((y % grid) * grid + x % grid, (kept_rows, kept_cols))
  newline = np.broadcast_to([[-1, 0]], (kept_rows, 1, 2))
  body = np.concatenate([np.stack([tiles, within], axis=-1), newline], axis=1)  # [R, C + 1, 2]
  return np.concatenate([base, body.reshape(-1, 2)]).astype(np.int32)


# Per-token arrays of a sample (`token_features`): packed along the text, and made relative to
# the row's tile slots when samples are packed (`mmjax.data.packing.finalize_row`).
TOKEN_FEATURES = ('image_token_source',)


def token_features(processed, cfg) -> dict[str, np.ndarray]:
  """`image_token_source [n, 2]`: for the sample's image tokens in order, (tile of the sample,
  feature within it), tile -1 for a row's newline (see `feature_sources`)."""
  tile_h, _ = view_size(cfg)
  grid = tile_h // cfg.patch_size
  sources, first = [np.zeros((0, 2), np.int32)], 0
  for p in processed:
    src = feature_sources(*p.image_size, grid, tile_h, cfg.grid_pinpoints)
    sources.append(np.where(src[:, :1] >= 0, src + [first, 0], src).astype(np.int32))
    first += len(p.pixels)
  return {'image_token_source': np.concatenate(sources)}


def base_size(cfg) -> tuple[int, int]:
  """(h, w) the whole image is first resized to for the base view: `size` as a square of its
  shortest edge, or its (height, width)."""
  return (cfg.shortest_edge, cfg.shortest_edge) if cfg.shortest_edge else tuple(cfg.size)


def _finish(view: Image.Image, cfg) -> np.ndarray:
  """The per-view resize (shortest edge, or exact size) and center crop HF applies to the base
  view and to every grid tile alike (no-ops when the tile is already the crop size)."""
  w, h = view.size
  if cfg.shortest_edge:
    new_h, new_w = common.shortest_edge_size(h, w, cfg.shortest_edge)
  else:
    new_h, new_w = cfg.size
  view = common.resize(view, new_h, new_w, cfg.resample)
  if cfg.crop_size:
    view = common.center_crop(view, *cfg.crop_size)
  return np.asarray(view)


def hf_settings(cfg) -> dict:
  """LlavaNextImageProcessor's settings."""
  size = ({'shortest_edge': cfg.shortest_edge} if cfg.shortest_edge
          else {'height': cfg.size[0], 'width': cfg.size[1]})
  crop = {'height': cfg.crop_size[0], 'width': cfg.crop_size[1]} if cfg.crop_size else None
  return dict(image_processor_type='LlavaNextImageProcessor', size=size,
              do_center_crop=crop is not None, **({'crop_size': crop} if crop else {}),
              image_grid_pinpoints=[list(p) for p in cfg.grid_pinpoints], do_pad=True)


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns pixels [1 + n_tiles, H, W, 3] float32 (base view first) and {'image_size': (h, w)}."""
  tile = tile_side(cfg)
  w, h = image.size
  best_h, best_w = select_best_resolution(h, w, cfg.grid_pinpoints)
  new_h, new_w = fit_size(h, w, best_h, best_w)
  resized = np.asarray(common.resize(image, new_h, new_w, cfg.resample))  # [new_h, new_w, 3]
  top, left = (best_h - new_h) // 2, (best_w - new_w) // 2
  canvas = np.zeros((best_h, best_w, 3), np.uint8)  # [best_h, best_w, 3]
  canvas[top:top + new_h, left:left + new_w] = resized
  views = [common.resize(image, *base_size(cfg), cfg.resample)]
  views += [Image.fromarray(canvas[y:y + tile, x:x + tile])
            for y in range(0, best_h, tile) for x in range(0, best_w, tile)]
  tiles = np.stack([_finish(view, cfg) for view in views])  # [1 + n_tiles, H, W, 3] uint8
  return common.normalize(tiles, cfg.mean, cfg.std, cfg.rescale_factor), {'image_size': (h, w)}

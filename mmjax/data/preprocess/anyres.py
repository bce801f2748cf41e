"""LLaVA-NeXT "AnyRes": a base view plus tiles of the image at the best grid resolution.

Matches ``LlavaNextImageProcessorPil``: choose the pinpoint resolution that keeps the most
effective pixels and wastes the fewest, resize keeping the aspect ratio (ceil on the free side),
zero-pad centered to the pinpoint, cut into crop-size tiles row-major; the base view is the whole
image resized (without keeping aspect) to the tile size and comes first.
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


def num_tokens(height: int, width: int, cfg) -> int:
  """Image tokens LLaVA-NeXT produces: base grid + unpadded tile features + one newline per row."""
  tile_h, tile_w = cfg.crop_size
  best_h, best_w = select_best_resolution(height, width, cfg.grid_pinpoints)
  grid_h, grid_w = tile_h // cfg.patch_size, tile_w // cfg.patch_size
  cur_h, cur_w = grid_h * (best_h // tile_h), grid_w * (best_w // tile_w)
  if width / height > cur_w / cur_h:
    new_h = int(round(height * (cur_w / width), 7))
    cur_h -= 2 * ((cur_h - new_h) // 2)
  else:
    new_w = int(round(width * (cur_h / height), 7))
    cur_w -= 2 * ((cur_w - new_w) // 2)
  return grid_h * grid_w + cur_h * cur_w + cur_h


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns pixels [1 + n_tiles, H, W, 3] float32 and {'image_size': (h, w)} of the original."""
  tile_h, tile_w = cfg.crop_size
  w, h = image.size
  best_h, best_w = select_best_resolution(h, w, cfg.grid_pinpoints)
  new_h, new_w = fit_size(h, w, best_h, best_w)
  resized = np.asarray(common.resize(image, new_h, new_w, cfg.resample))  # [new_h, new_w, 3]
  top, left = (best_h - new_h) // 2, (best_w - new_w) // 2
  canvas = np.zeros((best_h, best_w, 3), np.uint8)  # [best_h, best_w, 3]
  canvas[top:top + new_h, left:left + new_w] = resized
  tiles = [np.asarray(common.resize(image, tile_h, tile_w, cfg.resample))]
  for y in range(0, best_h, tile_h):
    for x in range(0, best_w, tile_w):
      tiles.append(canvas[y:y + tile_h, x:x + tile_w])
  pixels = common.normalize(np.stack(tiles), cfg.mean, cfg.std, cfg.rescale_factor)  # [n, H, W, 3]
  return pixels, {'image_size': (h, w)}

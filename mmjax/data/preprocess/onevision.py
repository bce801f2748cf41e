"""LLaVA-OneVision images: AnyRes for an image alone in its sample, one padded square for an image
that shares it, and the placeholder counts of LlavaOnevisionProcessor.

Matches ``LlavaOnevisionImageProcessorPil``: an image alone takes LLaVA-NeXT's AnyRes views
(`mmjax.data.preprocess.anyres`; OneVision resizes to an exact ``size`` square, no crop); an
image among several is padded to a square with ``int(mean * 255)`` and resized to ``size``
(`single`, as LLaVA-1.5). Counts are host arithmetic, no pixels: an image alone takes its base
view's ``g * g`` features, its unpadded grid (shrunk past ``anyres_max_N`` tiles' worth of
features, as the model interpolates it) and a newline per grid row; an image among several
``g * g + 1``; a video ``frames * ceil(g / 2)^2 + 1``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from mmjax.data.preprocess import ImageConfig, anyres, common, single
from mmjax.data.preprocess.anyres import select_best_resolution, unpadded_grid

DEFAULT_PINPOINTS = tuple((h, w) for h in range(384, 2305, 384) for w in range(384, 2305, 384))


def image_config(size: int | tuple[int, int] = 384, patch_size: int = 14,
                 grid_pinpoints=DEFAULT_PINPOINTS, **overrides):
  """`ImageConfig` of a LlavaOnevisionImageProcessor resizing to `size` (a square's side, or
  (height, width); tiles are height-sided squares) with CLIP's mean / std, bicubic, by
  default, for a tower of `patch_size`."""
  return ImageConfig(**{**dict(
      family="anyres", shortest_edge=None,
      size=(size, size) if isinstance(size, int) else tuple(size), crop_size=None,
      pad_to_square=True, patch_size=patch_size,
      grid_pinpoints=tuple(tuple(p) for p in grid_pinpoints)), **overrides})


def max_patches(vision_aspect_ratio: str) -> int:
  """N of `anyres_max_N`, read as transformers reads it (the characters of "anyres_max_" stripped
  from both ends)."""
  value = str(vision_aspect_ratio).strip("anyres_max_")
  if not value.isdigit():
    raise ValueError(f"vision_aspect_ratio {vision_aspect_ratio!r} is not 'anyres_max_<int>'")
  return int(value)


def anyres_grid(height: int, width: int, pinpoints, side: int) -> tuple[int, int]:
  """(rows, cols) of tiles of an image of (height, width) (`side`: the tile's pixels)."""
  best_h, best_w = select_best_resolution(height, width, pinpoints)
  return best_h // side, best_w // side


def shrunk(rows: int, cols: int, g: int, max_tiles: int) -> tuple[int, int] | None:
  """The size `anyres_max_<max_tiles>` shrinks an unpadded `rows x cols` feature grid to, else
  None (in Python floats, as transformers computes it)."""
  ratio = math.sqrt(rows * cols / (max_tiles * g ** 2))
  if ratio > 1.1:
    return int(rows // ratio), int(cols // ratio)
  return None


def tokens_for(height: int, width: int, g: int, pinpoints, side: int, max_tiles: int,
               multi: bool = False) -> int:
  """Placeholders of one image of (height, width): `g` features a tile side, tiles of `side`
  pixels, `multi` when it shares its sample with other images."""
  if multi:
    return g * g + 1
  rows, cols = anyres_grid(height, width, pinpoints, side)
  _, kept_rows, _, kept_cols = unpadded_grid(height, width, rows * g, cols * g)
  size = shrunk(kept_rows, kept_cols, g, max_tiles)
  out_rows, out_cols = (kept_rows, kept_cols) if size is None else size
  return g * g + out_rows * out_cols + out_rows


def video_tokens(frames: int, g: int) -> int:
  """Placeholders of a video: every frame pooled to ceil(g / 2) a side, one newline at the end."""
  p = math.ceil(g / 2)
  return frames * p * p + 1


def num_tokens(height: int, width: int, cfg, max_tiles: int = 9, multi: bool = False) -> int:
  """`tokens_for` with the processor settings `cfg` (an `image_config`)."""
  side = anyres.tile_side(cfg)
  return tokens_for(height, width, side // cfg.patch_size, cfg.grid_pinpoints, side, max_tiles,
                    multi)


def process(image: Image.Image, cfg, multi: bool = False) -> np.ndarray:
  """float32 views `[n, H, W, 3]`: AnyRes (base view first), or with `multi` the one padded
  square."""
  image = common.to_rgb(image)
  if multi:
    return single.process(image, cfg)[0]
  return anyres.process(image, cfg)[0]


def processor_arrays(images: Sequence[Image.Image], cfg) -> dict[str, np.ndarray]:
  """LlavaOnevisionProcessor's arrays for one sample's images: `pixel_values [I, P, C, H, W]`
  (views zero-padded to the most any image has), `image_sizes [I, 2]`, `batch_num_images [1]`."""
  multi = len(images) > 1
  views = [process(image, cfg, multi) for image in images]
  most = max(v.shape[0] for v in views)
  pixels = np.stack([np.pad(v, ((0, most - v.shape[0]), (0, 0), (0, 0), (0, 0))) for v in views])
  return {"pixel_values": np.transpose(pixels, (0, 1, 4, 2, 3)),
          "image_sizes": np.asarray([(i.size[1], i.size[0]) for i in images], np.int64),
          "batch_num_images": np.asarray([len(images)], np.int64)}

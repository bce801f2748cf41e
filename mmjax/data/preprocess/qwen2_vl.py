"""Qwen2-VL: "smart resize" to a multiple of patch*merge within [min_pixels, max_pixels], patches.

Matches ``Qwen2VLImageProcessorPil``. The image keeps (roughly) its aspect ratio and native size;
the vision tower sees a variable number of 14x14 patches, so the natural output is the flattened
patch sequence [grid_h * grid_w, C * T * P * P] in HF's order (merge windows contiguous, the
temporal axis a repeat of the single frame) and ``grid_thw = (1, grid_h, grid_w)``.
``process`` returns the NHWC image; ``patchify`` turns it into that sequence.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
  """(h, w), both multiples of ``factor``, area within [min_pixels, max_pixels], aspect ~kept."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f'aspect ratio must be < 200, got {height}x{width}')
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def grid_size(height: int, width: int, cfg) -> tuple[int, int]:
  """(grid_h, grid_w) in patches for an original image of (height, width)."""
  h, w = smart_resize(height, width, cfg.patch_size * cfg.merge_size, cfg.min_pixels, cfg.max_pixels)
  return h // cfg.patch_size, w // cfg.patch_size


def num_tokens(height: int, width: int, cfg) -> int:
  """Merged tokens of an image: (grid_h / merge) * (grid_w / merge)."""
  gh, gw = grid_size(height, width, cfg)
  return (gh // cfg.merge_size) * (gw // cfg.merge_size)


def patchify(pixels: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
  """[H, W, C] -> [grid_h * grid_w, C * T * P * P] in HF's order (C, T, P_h, P_w per row)."""
  h, w, c = pixels.shape
  gh, gw, m, p = h // patch_size, w // patch_size, merge_size, patch_size
  x = pixels.reshape(gh // m, m, p, gw // m, m, p, c)  # [gh/m, m, P, gw/m, m, P, C]
  x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # [gh/m, gw/m, m, m, C, P, P]
  x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, p, p))
  return x.reshape(gh * gw, c * temporal_patch_size * p * p)


def tile_size(cfg) -> None:
  """Images keep their own (smart-resized) size."""
  return None


def hf_settings(cfg) -> dict:
  """Qwen2VLImageProcessor's settings (transformers v5 spells the pixel budget as ``size``)."""
  return dict(image_processor_type='Qwen2VLImageProcessor', patch_size=cfg.patch_size,
              merge_size=cfg.merge_size, temporal_patch_size=cfg.temporal_patch_size,
              size={'shortest_edge': cfg.min_pixels, 'longest_edge': cfg.max_pixels})


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns pixels [1, H', W', 3] float32 at the smart-resized size and {'grid_thw': (1, gh, gw)}."""
  w, h = image.size
  new_h, new_w = smart_resize(h, w, cfg.patch_size * cfg.merge_size, cfg.min_pixels, cfg.max_pixels)
  resized = common.resize(image, new_h, new_w, cfg.resample)
  pixels = common.normalize(resized, cfg.mean, cfg.std, cfg.rescale_factor)  # [H', W', 3]
  return pixels[None], {'grid_thw': (1, new_h // cfg.patch_size, new_w // cfg.patch_size)}


PER_IMAGE_FEATURES = ('image_grid_thw',)


def sample_tiles(processed, cfg) -> np.ndarray:
  """Flattened patches [grid_h * grid_w, 3 * T * P * P] (HF's pixel_values layout)."""
  return processed.patches(cfg)


def empty_tiles(cfg) -> np.ndarray:
  return np.zeros((0, 3 * cfg.temporal_patch_size * cfg.patch_size ** 2), np.float32)


def image_features(processed, cfg) -> dict[str, np.ndarray]:
  grids = [p.grid_thw for p in processed]
  return {'image_grid_thw': np.asarray(grids, np.int32).reshape(-1, 3)}

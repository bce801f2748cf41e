"""Pixtral / Mistral3: resize so the image fits within `size` (the longest edge), then up to
whole multiples of the patch (`patch_size * merge_size`); rescale and normalise.

Matches ``PixtralImageProcessorPil`` (``PixtralProcessor`` hands it the tower's patch size times
its spatial merge size). The image keeps its own size: ``process`` returns it as one
``[1, H, W, 3]`` view. Its prompt is ``[IMG]`` x columns + ``[IMG_BREAK]`` per row of decoder
tokens, the last ``[IMG_BREAK]`` replaced by ``[IMG_END]`` (``image_token_ids``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common


def resized_size(height: int, width: int, cfg) -> tuple[int, int]:
  """(h, w) the processor resizes an image of (height, width) to: shrunk (floored) to fit
  `cfg.size`, then each side up to a whole number of patches."""
  max_h, max_w = cfg.size
  side = cfg.patch_size * cfg.merge_size
  ratio = max(height / max_h, width / max_w)
  if ratio > 1:
    height, width = int(math.floor(height / ratio)), int(math.floor(width / ratio))
  if height < 1 or width < 1:  # transformers fails on it too (a zero-sized resize)
    raise ValueError(f"an image of {height}x{width} pixels after fitting into {max_h}x{max_w} "
                     "keeps no pixel row or column: its aspect ratio is too extreme")
  return -(-height // side) * side, -(-width // side) * side


def token_grid(height: int, width: int, cfg) -> tuple[int, int]:
  """(rows, cols) of `[IMG]` tokens for an original image of (height, width)."""
  h, w = resized_size(height, width, cfg)
  side = cfg.patch_size * cfg.merge_size
  return h // side, w // side


def num_tokens(height: int, width: int, cfg) -> int:
  """Placeholder tokens of an image as PixtralProcessor counts them: `[IMG]` tokens and one
  break (or end) per row."""
  rows, cols = token_grid(height, width, cfg)
  return rows * (cols + 1)


def image_token_ids(rows: int, cols: int, image_id: int, break_id: int, end_id: int) -> np.ndarray:
  """The placeholder ids of a `rows x cols` image: `[IMG]` x cols + `[IMG_BREAK]` per row, the
  last `[IMG_END]` (int32 `[rows * (cols + 1)]`)."""
  ids = np.tile(np.append(np.full(cols, image_id), break_id), rows).astype(np.int32)
  ids[-1] = end_id
  return ids


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns pixels [1, H, W, 3] float32 at the resized size and {}."""
  w, h = image.size
  new_h, new_w = resized_size(h, w, cfg)
  resized = common.resize(image, new_h, new_w, cfg.resample)
  return common.normalize(resized, cfg.mean, cfg.std, cfg.rescale_factor)[None], {}


def empty_tiles(cfg) -> np.ndarray:
  return np.zeros((0, *cfg.size, 3), np.float32)


def check_row_budget(cfg, max_tiles: int, max_images: int) -> None:
  """The training pipeline batches fixed-size tiles or Qwen-VL's patch rows; Pixtral's images keep
  their own sizes and are preprocessed for inference (chat mode) only so far."""
  raise ValueError("the pixtral image preset is for inference (mmjax generate): the training "
                   "pipeline does not batch images of their own sizes for Pixtral yet")

"""Fuyu: an image becomes a grid of raw patches, with no encoder, as ``FuyuImageProcessorPil``
and ``FuyuProcessor`` make them.

The image is shrunk (bilinear, floored sizes, aspect kept; never enlarged) to fit ``size``, padded
at the bottom and right to ``size`` with pixel level 1 (the processor's ``padding_value`` 1.0,
before rescaling), rescaled and normalised to [-1, 1]; then cut back to whole patches covering the
resized image and flattened patch by patch, row-major, each patch ``[patch, patch, 3]``. Its
prompt is ``|SPEAKER|`` x columns + ``|NEWLINE|`` per patch row (``image_token_ids``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common

PAD_LEVEL = 1  # FuyuImageProcessor's padding_value 1.0, on the 0..255 scale it pads at
MEAN = STD = (0.5, 0.5, 0.5)


def resized_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
  """(h, w) the processor shrinks an image of (height, width) to so it fits `size` (h, w)."""
  max_h, max_w = size
  if height <= max_h and width <= max_w:
    return height, width
  scale = min(max_h / height, max_w / width)
  new_h, new_w = int(height * scale), int(width * scale)
  if new_h < 1 or new_w < 1:  # a zero-sized resize, which transformers fails on too
    raise ValueError(f"an image of {height}x{width} pixels shrunk to fit {max_h}x{max_w} keeps "
                     "no pixel row or column: its aspect ratio is too extreme")
  return new_h, new_w


def patch_grid(height: int, width: int, size: tuple[int, int], patch: int) -> tuple[int, int]:
  """(rows, columns) of patches of an original image of (height, width)."""
  h, w = resized_size(height, width, size)
  return min(size[0], -(-h // patch) * patch) // patch, min(size[1], -(-w // patch) * patch) // patch


def process(image: Image.Image, size: tuple[int, int], patch: int) -> tuple[np.ndarray, tuple]:
  """An RGB image -> float32 patches `[rows * cols, patch * patch * 3]` and (rows, cols)."""
  w, h = image.size
  if size[0] % patch or size[1] % patch:
    raise ValueError(f"the target size {size} must be whole patches of {patch}")
  new_h, new_w = resized_size(h, w, size)
  resized = np.asarray(common.resize(image, new_h, new_w, "bilinear"), np.uint8)  # [h, w, 3]
  padded = np.full((*size, 3), PAD_LEVEL, np.uint8)
  padded[:new_h, :new_w] = resized
  rows, cols = patch_grid(h, w, size, patch)
  pixels = common.normalize(padded[:rows * patch, :cols * patch], MEAN, STD)  # [H', W', 3]
  patches = pixels.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4)
  return patches.reshape(rows * cols, patch * patch * 3), (rows, cols)


def image_token_ids(rows: int, cols: int, speaker_id: int, newline_id: int) -> np.ndarray:
  """The placeholder ids of a `rows x cols` patch grid (int32 `[rows * (cols + 1)]`)."""
  return np.tile(np.append(np.full(cols, speaker_id), newline_id), rows).astype(np.int32)

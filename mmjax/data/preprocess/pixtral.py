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


def tile_size(cfg) -> None:
  """Images keep their own (fitted) size."""
  return None


def hf_settings(cfg) -> dict:
  """PixtralImageProcessor's settings (the processor multiplies in the merge:
  ``processor_config.json``)."""
  height, width = cfg.size
  size = {'longest_edge': height} if height == width else {'height': height, 'width': width}
  return dict(image_processor_type='PixtralImageProcessor', size=size,
              patch_size={'height': cfg.patch_size, 'width': cfg.patch_size}, do_pad=True)


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns pixels [1, H, W, 3] float32 at the resized size and {}."""
  w, h = image.size
  new_h, new_w = resized_size(h, w, cfg)
  resized = common.resize(image, new_h, new_w, cfg.resample)
  return common.normalize(resized, cfg.mean, cfg.std, cfg.rescale_factor)[None], {}


# Training (`mmjax.data.sample`): an image's "tiles" are its patches `[n, 3, P, P]` (the tower's
# input, as `pack_images` cuts them for inference), and `data.max_tiles` is a row's patch budget;
# each patch's (row, column) in its image's grid travels beside it for the tower's 2-D RoPE, and
# each `[IMG]` names its k x k block of patches (k = merge_size; Mistral3's patch merger).
LAYOUT_TOKENS = ('[IMG_BREAK]', '[IMG_END]')
TILE_FEATURES = ('patch_positions',)
TOKEN_FEATURES = ('image_token_source',)


def placeholder_ids(height: int, width: int, cfg, image_id: int, layout_ids) -> np.ndarray:
  return image_token_ids(*token_grid(height, width, cfg), image_id, *layout_ids)


def _packed(processed, cfg) -> dict:
  from mmjax.encoders.pixtral_vit import pack_images  # pylint: disable=g-import-not-at-top

  pixels = np.transpose(processed.pixels, (0, 3, 1, 2))  # [1, 3, H, W]
  return pack_images(pixels, [pixels.shape[2:]], cfg.patch_size)


def sample_tiles(processed, cfg) -> np.ndarray:
  """The image's patches `[rows * cols, 3, P, P]`, its grid row-major."""
  return _packed(processed, cfg)['patches']


def tile_features(processed_images, cfg) -> dict[str, np.ndarray]:
  """`patch_positions [patches, 2]`: (row, column) of each patch of the sample's images in its
  image's grid."""
  positions = [_packed(p, cfg)['positions'] for p in processed_images]
  return {'patch_positions': np.concatenate([np.zeros((0, 2), np.int32), *positions])}


def token_features(processed_images, cfg) -> dict[str, np.ndarray]:
  """`image_token_source [n, k*k, 2]`: for each `[IMG]` of the sample's images in order, its
  block of patches (patch of the sample, 0) in the order the patch merger takes them
  (`merge_index`; k = 1: the token's own patch)."""
  from mmjax.connectors.spatial_merger import merge_index  # pylint: disable=g-import-not-at-top

  grids = [np.shape(p.pixels)[1:3] for p in processed_images]  # (H, W) of each resized image
  index = merge_index(np.asarray(grids, np.int64).reshape(-1, 2) // cfg.patch_size,
                      cfg.merge_size)  # [n, k*k]
  return {'image_token_source': np.stack([index, np.zeros_like(index)], -1).astype(np.int32)}


def empty_tiles(cfg) -> np.ndarray:
  return np.zeros((0, 3, cfg.patch_size, cfg.patch_size), np.float32)

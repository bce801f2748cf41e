"""The training pipeline's image hooks (`mmjax.data.preprocess`) for Fuyu, over the processor's
own functions in `mmjax.data.preprocess.fuyu` (the ones chat mode and the parity tests use).

An image's "tiles" are its raw patches: `pixel_values` rows of `patch_size^2 * 3` values, one per
`|SPEAKER|` placeholder, and `data.max_tiles` is a row's patch budget. Its placeholder run is
`|SPEAKER|` x columns + `|NEWLINE|` per patch row. The target size is `ImageConfig.size`; the
pixel scaling (bilinear shrink, pad level 1, [-1, 1]) is the processor's fixed one.
"""

from __future__ import annotations

import numpy as np

from mmjax.data.preprocess import fuyu

LAYOUT_TOKENS = ('|NEWLINE|',)


def _grid(height: int, width: int, cfg) -> tuple[int, int]:
  return fuyu.patch_grid(height, width, tuple(cfg.size), cfg.patch_size)


def tile_size(cfg) -> None:
  """Images keep their own (padded) size."""
  return None


def hf_settings(cfg) -> dict:
  """FuyuImageProcessor's settings (``mmjax.generation.fuyu.FuyuImageSettings.from_hf`` reads
  them back)."""
  height, width = cfg.size
  return dict(image_processor_type='FuyuImageProcessor', size={'height': height, 'width': width},
              patch_size={'height': cfg.patch_size, 'width': cfg.patch_size}, do_pad=True,
              padding_value=1.0, padding_mode='constant')


def process(image, cfg) -> tuple[np.ndarray, dict]:
  """Patches `[rows * cols, patch * patch * 3]` float32, row-major, and {}."""
  patches, _ = fuyu.process(image, tuple(cfg.size), cfg.patch_size)
  return patches, {}


def num_tokens(height: int, width: int, cfg) -> int:
  rows, cols = _grid(height, width, cfg)
  return rows * (cols + 1)


def placeholder_ids(height: int, width: int, cfg, image_id: int, layout_ids) -> np.ndarray:
  rows, cols = _grid(height, width, cfg)
  return fuyu.image_token_ids(rows, cols, image_id, layout_ids[0])


def empty_tiles(cfg) -> np.ndarray:
  return np.zeros((0, cfg.patch_size * cfg.patch_size * 3), np.float32)

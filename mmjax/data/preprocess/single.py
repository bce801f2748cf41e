"""Single-tile families: CLIP (resize + center crop), LLaVA-1.5 (pad to square first), SigLIP.

Matches ``CLIPImageProcessorPil``, ``LlavaImageProcessorPil`` (``do_pad=True``) and
``SiglipImageProcessorPil``: one image in, one [1, H, W, 3] tile out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common


def resize_and_crop(image: Image.Image, cfg) -> Image.Image:
  """The geometric part of the CLIP / LLaVA / SigLIP processors (uint8 in, uint8 out)."""
  if cfg.pad_to_square:
    # HF's LLaVA fills with int(mean * 255) per channel (truncated, not rounded).
    image = common.pad_to_square(image, [int(m * 255) for m in cfg.mean])
  w, h = image.size
  if cfg.shortest_edge:
    new_h, new_w = common.shortest_edge_size(h, w, cfg.shortest_edge)
  else:
    new_h, new_w = cfg.size
  image = common.resize(image, new_h, new_w, cfg.resample)
  if cfg.crop_size:
    image = common.center_crop(image, *cfg.crop_size)
  return image


def tile_size(cfg) -> tuple[int, int]:
  """SigLIP resizes to ``size`` exactly; CLIP and LLaVA-1.5 crop to ``crop_size``."""
  return cfg.size if cfg.family == 'siglip' else (cfg.crop_size or cfg.size)


def hf_settings(cfg) -> dict:
  """The processor-specific part of the transformers ``preprocessor_config.json``."""
  if cfg.family == 'siglip':
    height, width = cfg.size
    return dict(image_processor_type='SiglipImageProcessor', size={'height': height, 'width': width})
  crop = {'height': cfg.crop_size[0], 'width': cfg.crop_size[1]} if cfg.crop_size else None
  llava = cfg.family == 'llava'
  return dict(image_processor_type='LlavaImageProcessor' if llava else 'CLIPImageProcessor',
              size={'shortest_edge': cfg.shortest_edge}, do_center_crop=crop is not None,
              **({'crop_size': crop} if crop else {}), **(dict(do_pad=cfg.pad_to_square) if llava else {}))


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns pixels [1, H, W, 3] float32 and no extra metadata."""
  tile = resize_and_crop(image, cfg)
  return common.normalize(tile, cfg.mean, cfg.std, cfg.rescale_factor)[None], {}

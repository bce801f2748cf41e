"""Llama 3.2 Vision (Mllama): fit the image into the best grid of up to ``max_tiles`` square tiles.

Matches transformers' ``MllamaImageProcessorPil`` and ``MllamaProcessor``:

* the canvas is the tile grid (rows, cols), rows*cols <= max_tiles, whose scale
  ``min(canvas_h / h, canvas_w / w)`` is the smallest one >= 1 (the largest one if every grid
  shrinks the image), the smaller area on ties;
* the image is resized keeping its aspect ratio to fit that canvas, no side below one tile unless
  the canvas is (bilinear by default), zero-padded at the bottom and right *before* rescale and
  normalize (padding is ``(0 - mean) / std``), and cut into tiles row-major;
* an image is ONE ``<|image|>`` token in the text; text tokens see images through the dense
  ``cross_attention_mask [B, T, images, max_tiles]`` (``cross_attention_mask`` below);
* ``pack`` batches images as the processor does: ``pixel_values [B, images, max_tiles, C, H, W]``
  (NCHW, unused tiles zero), ``aspect_ratio_ids [B, images]`` (index of (rows, cols) among
  ``supported_aspect_ratios(max_tiles)`` + 1; 0 for a padding image) and
  ``aspect_ratio_mask [B, images, max_tiles]`` (first tile always 1, padding images included).

The grids are enumerated as transformers does (``for a in 1..n: for b in 1..n: if a*b <= n``) and
read as (rows, cols) everywhere, so ids agree with the model's ``supported_aspect_ratios``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common

_RESAMPLE_BY_CODE = {int(v): name for name, v in common.RESAMPLE.items()}  # PIL's enum values


@dataclasses.dataclass(frozen=True)
class MllamaImageConfig:
  """Processor settings; the defaults are Llama 3.2 Vision's released ``preprocessor_config.json``.

  Field names are ``ImageConfig``'s, so either can be passed to ``process``.
  """
  size: tuple[int, int] = (560, 560)  # one tile (h, w), square
  max_tiles: int = 4
  mean: tuple[float, float, float] = common.OPENAI_CLIP_MEAN
  std: tuple[float, float, float] = common.OPENAI_CLIP_STD
  rescale_factor: float = 1 / 255
  resample: str = 'bilinear'

  @classmethod
  def from_hf(cls, pre: Mapping[str, Any]) -> 'MllamaImageConfig':
    """A transformers ``preprocessor_config.json`` (or ``MllamaImageProcessorPil.to_dict()``);
    absent keys take the processor class's defaults, as transformers does."""
    size = pre.get('size') or {'height': 224, 'width': 224}
    resample = pre.get('resample', 2)
    if isinstance(resample, int) and resample not in _RESAMPLE_BY_CODE:
      raise ValueError(f'unsupported resample {resample}; expected one of {_RESAMPLE_BY_CODE}')
    resample = _RESAMPLE_BY_CODE[resample] if isinstance(resample, int) else resample.lower()
    mean = pre.get('image_mean') or common.IMAGENET_STANDARD_MEAN
    std = pre.get('image_std') or common.IMAGENET_STANDARD_STD
    scale = float(pre.get('rescale_factor', 1 / 255))
    # Rescale and normalize are one lookup table: switching either off is its identity.
    if not pre.get('do_normalize', True):
      mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if not pre.get('do_rescale', True):
      scale = 1.0
    return cls(size=(int(size['height']), int(size['width'])),
               max_tiles=int(pre.get('max_image_tiles', 4)),
               mean=tuple(float(m) for m in _triple(mean)),
               std=tuple(float(s) for s in _triple(std)),
               rescale_factor=scale, resample=resample)


def _triple(value) -> Sequence[float]:
  return [value] * 3 if isinstance(value, (int, float)) else value


@functools.lru_cache(maxsize=16)
def supported_aspect_ratios(max_tiles: int) -> tuple[tuple[int, int], ...]:
  """Tile grids (rows, cols) with rows*cols <= max_tiles, in transformers' order."""
  return tuple((a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1)
               if a * b <= max_tiles)


def aspect_ratio_id(aspect_ratio: tuple[int, int], max_tiles: int) -> int:
  """1-based index of the grid among ``supported_aspect_ratios`` (0 is a padding image)."""
  return supported_aspect_ratios(max_tiles).index(tuple(aspect_ratio)) + 1


@functools.lru_cache(maxsize=1024)
def optimal_tiled_canvas(height: int, width: int, max_tiles: int, tile: int) -> tuple[int, int]:
  """(canvas_h, canvas_w): the grid that upscales least, else the one that downscales least."""
  canvases = [(rows * tile, cols * tile) for rows, cols in supported_aspect_ratios(max_tiles)]
  scales = [min(ch / height, cw / width) for ch, cw in canvases]
  upscales = [s for s in scales if s >= 1]
  chosen = min(upscales) if upscales else max(scales)
  # min() keeps the first of equal areas, as np.argmin does.
  return min((c for c, s in zip(canvases, scales) if s == chosen), key=lambda c: c[0] * c[1])


def fit_to_canvas(height: int, width: int, canvas_h: int, canvas_w: int,
                  tile: int) -> tuple[int, int]:
  """(new_h, new_w): aspect kept, each side clipped to [tile, canvas side], no side below 1."""
  target_h = min(max(height, tile), canvas_h)
  target_w = min(max(width, tile), canvas_w)
  scale_h, scale_w = target_h / height, target_w / width
  if scale_w < scale_h:
    return min(math.floor(height * scale_w) or 1, target_h), target_w
  return target_h, min(math.floor(width * scale_h) or 1, target_w)


def _tile(cfg) -> int:
  height, width = cfg.size
  if height != width:
    raise ValueError(f'Mllama tiles must be square, got size {cfg.size}')
  return height


def aspect_ratio(height: int, width: int, cfg) -> tuple[int, int]:
  """(rows, cols) of tiles for an original image of (height, width)."""
  tile = _tile(cfg)
  canvas_h, canvas_w = optimal_tiled_canvas(height, width, cfg.max_tiles, tile)
  return canvas_h // tile, canvas_w // tile


def num_tiles(height: int, width: int, cfg) -> int:
  rows, cols = aspect_ratio(height, width, cfg)
  return rows * cols


def num_tokens(height: int, width: int, cfg) -> int:
  """Placeholder tokens in the text: one ``<|image|>`` per image (features enter by
  cross-attention, not as tokens)."""
  return 1


def tile_size(cfg) -> tuple[int, int]:
  return cfg.size


def hf_settings(cfg) -> dict:
  """MllamaImageProcessor's settings (``MllamaImageConfig.from_hf`` reads them back)."""
  height, width = cfg.size
  return dict(image_processor_type='MllamaImageProcessor', size={'height': height, 'width': width},
              max_image_tiles=cfg.max_tiles, do_pad=True)


def process(image: Image.Image, cfg) -> tuple[np.ndarray, dict]:
  """Returns tiles [rows*cols, tile, tile, 3] float32 (row-major) and
  {'aspect_ratio': (rows, cols), 'num_tiles': rows*cols}."""
  image = common.to_rgb(image)
  tile = _tile(cfg)
  w, h = image.size
  canvas_h, canvas_w = optimal_tiled_canvas(h, w, cfg.max_tiles, tile)
  new_h, new_w = fit_to_canvas(h, w, canvas_h, canvas_w, tile)
  canvas = np.zeros((canvas_h, canvas_w, 3), np.uint8)  # zero padding before normalizing
  canvas[:new_h, :new_w] = np.asarray(common.resize(image, new_h, new_w, cfg.resample))
  pixels = common.normalize(canvas, cfg.mean, cfg.std, cfg.rescale_factor)  # [ch, cw, 3]
  rows, cols = canvas_h // tile, canvas_w // tile
  tiles = pixels.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 1, 3, 4)
  return tiles.reshape(rows * cols, tile, tile, 3), {'aspect_ratio': (rows, cols),
                                                     'num_tiles': rows * cols}


def pack(images_per_row: Sequence[Sequence[tuple[np.ndarray, tuple[int, int]]]],
         max_tiles: int) -> dict[str, np.ndarray]:
  """Batches ``(tiles [n, H, W, 3], (rows, cols))`` pairs, a list per row, as the processor does.

  Returns ``pixel_values [B, I, max_tiles, 3, H, W]`` float32 (NCHW, transformers' layout; unused
  tiles and padding images zero), ``aspect_ratio_ids [B, I]`` and ``aspect_ratio_mask [B, I,
  max_tiles]`` (int32), I the most images in a row.
  """
  shapes = {tiles.shape[1:] for row in images_per_row for tiles, _ in row}
  if len(shapes) != 1:
    raise ValueError(f'pack needs at least one image and one tile shape; got tile shapes {shapes}')
  (height, width, channels), = shapes
  batch, images = len(images_per_row), max(len(row) for row in images_per_row)
  pixel_values = np.zeros((batch, images, max_tiles, channels, height, width), np.float32)
  ids = np.zeros((batch, images), np.int32)
  mask = np.zeros((batch, images, max_tiles), np.int32)
  mask[:, :, 0] = 1  # transformers marks the first tile of padding images valid too
  for b, row in enumerate(images_per_row):
    for i, (tiles, ratio) in enumerate(row):
      n = len(tiles)
      if n != ratio[0] * ratio[1] or n > max_tiles:
        raise ValueError(f'image {i} of row {b}: {n} tiles for aspect ratio {ratio} '
                         f'(max_tiles {max_tiles})')
      pixel_values[b, i, :n] = tiles.transpose(0, 3, 1, 2)
      ids[b, i] = aspect_ratio_id(ratio, max_tiles)
      mask[b, i, :n] = 1
  return {'pixel_values': pixel_values, 'aspect_ratio_ids': ids, 'aspect_ratio_mask': mask}


def cross_attention_token_mask(input_ids: Sequence[int],
                               image_token_id: int) -> list[tuple[int, int]]:
  """(start, end) per image token: the text positions [start, end) that see that image.

  Each image is seen from its token until the next image token; a run of consecutive image
  tokens is seen together until the end of the run's last span. A lone image token gets end -1:
  until the end of the padded batch (transformers' ``get_cross_attention_token_mask``).
  """
  starts = np.flatnonzero(np.asarray(input_ids) == image_token_id).tolist()
  if len(starts) <= 1:
    return [(start, -1) for start in starts]
  ends = starts[1:] + [len(input_ids)]
  for k in range(len(starts) - 2, -1, -1):
    if ends[k] == starts[k] + 1:  # the next token is an image too
      ends[k] = ends[k + 1]
  return list(zip(starts, ends))


def cross_attention_mask(input_ids: Sequence[Sequence[int]], image_token_id: int,
                         num_tiles_per_row: Sequence[Sequence[int]], max_tiles: int) -> np.ndarray:
  """Dense ``[B, T, I, max_tiles]`` int32, 1 where text position t sees tile j of image i.

  ``input_ids`` rows as the model gets them (padded; T is the longest row); ``num_tiles_per_row``
  the tiles of each row's images. I is the most image tokens in a row.
  """
  spans = [cross_attention_token_mask(row, image_token_id) for row in input_ids]
  length = max(len(row) for row in input_ids)
  mask = np.zeros((len(spans), length, max(len(s) for s in spans), max_tiles), np.int32)
  for b, (row_spans, row_tiles) in enumerate(zip(spans, num_tiles_per_row)):
    for i, ((start, end), tiles) in enumerate(zip(row_spans, row_tiles)):
      end = length if end == -1 else min(end, length)
      mask[b, start:end, i, :tiles] = 1
  return mask


# --- the training pipeline's hooks (mmjax.data.preprocess) ---------------------------------------

PER_IMAGE_FEATURES = ('aspect_ratio_ids', 'aspect_ratio_mask')


def sample_tiles(processed, cfg) -> np.ndarray:
  """The image's tiles then zero tiles up to ``max_tiles`` ([max_tiles, H, W, 3], as the
  processor pads them): every image owns ``max_tiles`` slots of a packed row."""
  tiles = processed.pixels
  pad = np.zeros((cfg.max_tiles - len(tiles), *tiles.shape[1:]), tiles.dtype)
  return np.concatenate([tiles, pad])


def image_features(processed, cfg) -> dict[str, np.ndarray]:
  """``aspect_ratio_ids [n]`` and ``aspect_ratio_mask [n, max_tiles]`` as the processor makes
  them for the images of one sample."""
  grids = [p.aspect_ratio for p in processed]
  mask = np.zeros((len(grids), cfg.max_tiles), np.int32)
  for i, (rows, cols) in enumerate(grids):
    mask[i, :rows * cols] = 1
  ids = [aspect_ratio_id(grid, cfg.max_tiles) for grid in grids]
  return {'aspect_ratio_ids': np.asarray(ids, np.int32), 'aspect_ratio_mask': mask}


def check_row_budget(cfg, max_tiles: int, max_images: int) -> None:
  # Image k of a row is slots [k * T, (k + 1) * T): the model reshapes the tiles by image.
  if max_tiles != max_images * cfg.max_tiles:
    raise ValueError(f'mllama images take {cfg.max_tiles} tile slots each: data.max_tiles must be '
                     f'max_images * {cfg.max_tiles} = {max_images * cfg.max_tiles}, got {max_tiles}')

"""Pixel operations shared by every image family: decode, resize, crop, pad, normalize.

Numerics follow transformers' PIL image processors exactly (the parity tests hold them to 1e-5):

* images are decoded to RGB, transparency composited onto white;
* resizing is PIL's ``Image.resize`` on uint8 RGB data (BICUBIC for every family here);
* rescale is ``uint8 -> float64 * scale -> float32`` and normalize is ``(x - mean) / std`` in
  float32, rescale first.

Because the input of rescale+normalize is uint8, both steps are a per-channel lookup table of 256
float32 values computed with exactly those operations; that is bit-identical to HF and several
times faster than the float arithmetic on a full image.

All arrays returned are NHWC / HWC float32 (HF returns CHW).
"""

from __future__ import annotations

import functools
import io
from typing import Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

RESAMPLE = {
    'nearest': Image.Resampling.NEAREST,
    'bilinear': Image.Resampling.BILINEAR,
    'bicubic': Image.Resampling.BICUBIC,
    'lanczos': Image.Resampling.LANCZOS,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
}


def decode_image(data: bytes | str) -> Image.Image:
  """Decodes encoded image bytes (or opens a path) into an RGB PIL image.

  Transparent images are composited onto a white background, as transformers does.
  Raises whatever PIL raises on a corrupt file (callers turn it into a skip reason).
  """
  image = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
  image.load()  # Force the decode now so that truncated files fail here, not later.
  return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
  """RGB copy of ``image``; alpha is composited onto white."""
  if 'A' in image.getbands() or image.info.get('transparency') is not None:
    rgba = image.convert('RGBA')
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert('RGB')
  return image if image.mode == 'RGB' else image.convert('RGB')


def resize(image: Image.Image, height: int, width: int, resample: str = 'bicubic') -> Image.Image:
  """PIL resize to exactly (height, width)."""
  if image.size == (width, height):
    return image
  return image.resize((width, height), resample=RESAMPLE[resample])


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
  """Output (h, w) with the short side at ``shortest_edge``, long side floored (torchvision rule)."""
  short, long = (width, height) if width <= height else (height, width)
  new_long = int(shortest_edge * long / short)
  return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
  """Center crop; an image smaller than the crop is zero-padded around, like HF's center_crop.

  The crop box's top-left is ``(size - crop) // 2`` (floored); where the image is smaller, it is
  first placed on a black canvas at offset ``ceil((crop - size) / 2)``.
  """
  w, h = image.size
  if h >= height and w >= width:
    top, left = (h - height) // 2, (w - width) // 2
    return image.crop((left, top, left + width, top + height))
  # Small image: mirror HF's pad-then-crop arithmetic.
  new_h, new_w = max(height, h), max(width, w)
  top_pad, left_pad = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
  canvas = Image.new('RGB', (new_w, new_h), (0, 0, 0))
  canvas.paste(image, (left_pad, top_pad))
  top = (h - height) // 2 + top_pad
  left = (w - width) // 2 + left_pad
  return canvas.crop((max(0, left), max(0, top), min(new_w, left + width), min(new_h, top + height)))


def pad_to_square(image: Image.Image, background: Sequence[int]) -> Image.Image:
  """Pads the short side symmetrically (extra pixel after) to a square of ``background`` color."""
  w, h = image.size
  if w == h:
    return image
  side = max(w, h)
  canvas = Image.new('RGB', (side, side), tuple(int(c) for c in background))
  canvas.paste(image, ((side - w) // 2, (side - h) // 2))
  return canvas


@functools.lru_cache(maxsize=32)
def _lut(mean: tuple[float, ...], std: tuple[float, ...], scale: float) -> np.ndarray:
  """[3 * 256] float32 table: value v of channel c -> (float32(v * scale) - mean_c) / std_c."""
  levels = (np.arange(256, dtype=np.float64) * scale).astype(np.float32)  # [256]
  mean32 = np.asarray(mean, dtype=np.float32)[:, None]  # [3, 1]
  std32 = np.asarray(std, dtype=np.float32)[:, None]
  return ((levels[None, :] - mean32) / std32).astype(np.float32).reshape(-1)  # [3 * 256]


_CHANNEL_OFFSET = np.array([0, 256, 512], dtype=np.intp)


def normalize(
    pixels: np.ndarray | Image.Image,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = 1 / 255,
) -> np.ndarray:
  """uint8 [..., 3] (or an RGB PIL image) -> float32 [..., 3], rescaled then normalized."""
  pixels = np.asarray(pixels, dtype=np.uint8)
  if pixels.shape[-1] != 3:
    raise ValueError(f'normalize expects RGB pixels [..., 3], got shape {pixels.shape}')
  lut = _lut(tuple(float(m) for m in mean), tuple(float(s) for s in std), float(scale))
  return np.take(lut, pixels.astype(np.intp) + _CHANNEL_OFFSET)

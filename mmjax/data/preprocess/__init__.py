"""Image preprocessing per model family, at parity with transformers' PIL image processors.

``ImageConfig`` holds the knobs a model's processor config has (sizes, mean/std, tiling limits);
``ImageProcessor(cfg)(pil_image)`` returns a ``ProcessedImage``:

* ``pixels``: float32 NHWC tiles ``[n_tiles, H, W, 3]`` (families with a fixed tile size), or for
  ``qwen2_vl`` the single smart-resized image ``[1, H', W', 3]`` (see ``ProcessedImage.patches``);
* ``num_tokens``: how many placeholder tokens the model will produce for this image;
* ``image_size``: the original (height, width); ``grid_thw`` for Qwen2-VL.

Families:
  ``clip``      resize shortest edge + center crop (CLIPImageProcessor)
  ``llava``     pad to square with the mean color, then as clip (LLaVA-1.5)
  ``siglip``    resize to a fixed square (SiglipImageProcessor)
  ``anyres``    LLaVA-NeXT base view + grid tiles (LlavaNextImageProcessor)
  ``onevision`` LLaVA-OneVision: AnyRes (``max_tiles``: N of ``anyres_max_N``) for an image alone
                in its sample, one padded square among several (LlavaOnevisionImageProcessor)
  ``internvl``  dynamic aspect-ratio tiling + thumbnail (GotOcr2ImageProcessor, crop_to_patches)
  ``qwen2_vl``  smart resize within [min_pixels, max_pixels] + patch flattening (Qwen2VLImageProcessor)
  ``mllama``    the best grid of up to ``max_tiles`` square tiles, zero-padded (MllamaImageProcessor);
                one ``<|image|>`` token per image, ``aspect_ratio`` (rows, cols) per image
  ``pixtral``   fit within ``size`` then up to multiples of patch*merge (PixtralImageProcessor);
                ``[IMG]`` rows ended by ``[IMG_BREAK]``, the last ``[IMG_END]``
  ``fuyu``      shrink to fit ``size``, pad, raw patches of ``patch_size`` (FuyuImageProcessor);
                ``|SPEAKER|`` x columns + ``|NEWLINE|`` per patch row
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mmjax.data.preprocess import (anyres, common, fuyu_pipeline, mllama, onevision_pipeline,
                                    pixtral, qwen2_vl, single, tiling)
from mmjax.data.preprocess.common import decode_image

# Each family's module: ``process(image, cfg) -> (pixels, meta)`` and, where the default does not
# fit, ``num_tokens(h, w, cfg)`` (default: one tile's tokens), ``sample_tiles(processed, cfg)``
# (the sample's pixel rows; default: ``processed.pixels``), ``empty_tiles(cfg)``,
# ``PER_IMAGE_FEATURES`` + ``image_features(processed_images, cfg)`` (arrays per image that
# packing puts into ``max_images`` slots), ``TOKEN_FEATURES`` + ``token_features(processed_images,
# cfg)`` (arrays per image token, packed along the text), ``TILE_FEATURES`` +
# ``tile_features(processed_images, cfg)`` (arrays per tile, packed beside ``pixel_values``), ``LAYOUT_TOKENS`` +
# ``placeholder_ids(height, width, cfg, image_id, layout_ids)`` (an image's placeholder run when it is
# not all ``image_token``: Pixtral's row breaks, Fuyu's newlines) and
# ``check_row_budget(cfg, max_tiles, max_images)``. With ``SHARED_LAYOUT``, ``process`` and
# ``num_tokens`` take ``shared``. ``tile_size(cfg)`` (default: ``crop_size or size``; None: images keep
# their own size) and ``hf_settings(cfg)`` (the transformers processor's settings, see
# ``hf_image_processor_config``) where a family has them. (the image shares its sample with other images: OneVision).
_MODULES = {'clip': single, 'llava': single, 'siglip': single, 'anyres': anyres,
            'onevision': onevision_pipeline,
            'internvl': tiling, 'qwen2_vl': qwen2_vl, 'mllama': mllama,
            'pixtral': pixtral, 'fuyu': fuyu_pipeline}
FAMILIES = tuple(_MODULES)


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """Image processor settings; the defaults are LLaVA-1.5 at 336 px (CLIP ViT-L/14-336)."""
  family: str = 'llava'
  shortest_edge: int | None = 336  # Resize the short side to this (clip/llava/anyres)...
  size: tuple[int, int] | None = None  # ...or to exactly (h, w) (siglip, internvl tile size);
  # pixtral: the (h, w) an image is shrunk to fit (its longest edge twice).
  crop_size: tuple[int, int] | None = (336, 336)  # Center crop (clip/llava); tile size (anyres).
  mean: tuple[float, float, float] = common.OPENAI_CLIP_MEAN
  std: tuple[float, float, float] = common.OPENAI_CLIP_STD
  rescale_factor: float = 1 / 255
  resample: str = 'bicubic'
  pad_to_square: bool = True  # LLaVA-1.5 pads with the mean color before resizing.
  patch_size: int = 14  # Vision tower patch size, for token counts.
  merge_size: int = 1  # Tokens merged per side after the tower (pixel shuffle / patch merger).
  grid_pinpoints: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
  min_tiles: int = 1
  max_tiles: int = 12  # internvl / mllama: tiles an image; onevision: N of anyres_max_N
  use_thumbnail: bool = True
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  temporal_patch_size: int = 2
  tokens_per_image: int | None = None  # Override the computed count (single-tile families).

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f'unknown image family {self.family!r}; expected one of {FAMILIES}')
    for name in ('size', 'crop_size'):
      value = getattr(self, name)
      if isinstance(value, int):
        object.__setattr__(self, name, (value, value))
      elif value is not None:
        object.__setattr__(self, name, tuple(int(v) for v in value))
    object.__setattr__(self, 'grid_pinpoints', tuple(tuple(int(v) for v in p) for p in self.grid_pinpoints))
    object.__setattr__(self, 'mean', tuple(float(v) for v in self.mean))
    object.__setattr__(self, 'std', tuple(float(v) for v in self.std))

  @property
  def tile_size(self) -> tuple[int, int] | None:
    """(H, W) of every tile this family emits; None where images keep their own size
    (qwen2_vl, pixtral, fuyu)."""
    hook = getattr(_MODULES[self.family], 'tile_size', None)
    return (self.crop_size or self.size) if hook is None else hook(self)


def _onevision_pinpoints() -> tuple[tuple[int, int], ...]:
  from mmjax.data.preprocess import onevision  # pylint: disable=g-import-not-at-top

  return onevision.DEFAULT_PINPOINTS


def preset(name: str, **overrides: Any) -> ImageConfig:
  """Processor settings of well-known checkpoints, e.g. ``preset('llava15')``."""
  presets = {
      'clip224': dict(family='clip', shortest_edge=224, crop_size=224, pad_to_square=False),
      'clip336': dict(family='clip', shortest_edge=336, crop_size=336, pad_to_square=False),
      'llava15': dict(family='llava', shortest_edge=336, crop_size=336, pad_to_square=True),
      'siglip384': dict(family='siglip', shortest_edge=None, size=384, crop_size=None,
                        mean=common.IMAGENET_STANDARD_MEAN, std=common.IMAGENET_STANDARD_STD,
                        pad_to_square=False),
      'llava_next': dict(family='anyres', shortest_edge=336, crop_size=336, pad_to_square=False),
      # LlavaOnevisionImageProcessor's defaults: 384-px squares, no crop, anyres_max_9.
      'llava_onevision': dict(family='onevision', shortest_edge=None, size=384, crop_size=None,
                              pad_to_square=True, patch_size=14, max_tiles=9,
                              grid_pinpoints=_onevision_pinpoints()),
      'internvl': dict(family='internvl', shortest_edge=None, size=448, crop_size=None,
                       mean=common.IMAGENET_DEFAULT_MEAN, std=common.IMAGENET_DEFAULT_STD,
                       pad_to_square=False, merge_size=2, max_tiles=12),
      'qwen2_vl': dict(family='qwen2_vl', shortest_edge=None, crop_size=None, pad_to_square=False,
                       merge_size=2),
      # IdeficsImageProcessor: a bicubic resize to the tower's square, CLIP's mean / std; one
      # `<image>` token an image (its states enter through cross-attention, not the sequence).
      'idefics': dict(family='siglip', shortest_edge=None, size=224, crop_size=None,
                      pad_to_square=False, tokens_per_image=1),
      # BlipImageProcessor (BLIP-2, InstructBLIP): the same bicubic resize to the tower's square
      # with CLIP's mean / std; the image token repeats once per query.
      'blip2': dict(family='siglip', shortest_edge=None, size=224, crop_size=None,
                    pad_to_square=False),
      'mllama': dict(family='mllama', shortest_edge=None, size=560, crop_size=None,
                     pad_to_square=False, max_tiles=4, resample='bilinear'),
      'pixtral': dict(family='pixtral', shortest_edge=None, size=1024, crop_size=None,
                      pad_to_square=False, patch_size=16),
      'mistral3': dict(family='pixtral', shortest_edge=None, size=1540, crop_size=None,
                       pad_to_square=False, patch_size=14, merge_size=2),
      # FuyuImageProcessor (its own scaling to [-1, 1]): shrink to fit 1080x1920, 30-px patches.
      'fuyu': dict(family='fuyu', shortest_edge=None, size=(1080, 1920), crop_size=None,
                   pad_to_square=False, patch_size=30, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                   resample='bilinear'),
  }
  if name not in presets:
    raise ValueError(f'unknown image preset {name!r}; expected one of {sorted(presets)}')
  return ImageConfig(**{**presets[name], **overrides})


@dataclasses.dataclass
class ProcessedImage:
  pixels: np.ndarray  # [n_tiles, H, W, 3] float32
  num_tokens: int
  image_size: tuple[int, int]  # original (height, width)
  grid_thw: tuple[int, int, int] | None = None  # qwen2_vl only
  aspect_ratio: tuple[int, int] | None = None  # mllama only: (rows, cols) of tiles
  shared: bool = False  # the image shares its sample with others (onevision: no AnyRes)

  def patches(self, cfg: ImageConfig) -> np.ndarray:
    """Qwen2-VL flattened patches [grid_h * grid_w, 3 * T * P * P] (HF's pixel_values layout)."""
    return qwen2_vl.patchify(self.pixels[0], cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)


class ImageProcessor:
  """Family dispatch: PIL image -> ProcessedImage. Picklable (grain workers)."""

  def __init__(self, cfg: ImageConfig):
    self.cfg = cfg
    # whether an image's views and tokens depend on its sharing the sample (``shared``)
    self.shared_layout = bool(getattr(_MODULES[cfg.family], 'SHARED_LAYOUT', False))

  def num_tokens(self, height: int, width: int, shared: bool = False) -> int:
    """Placeholder tokens for an original image of (height, width) (``shared``: its sample
    holds other images too)."""
    cfg = self.cfg
    per_side = lambda n: n // cfg.patch_size // cfg.merge_size
    hook = getattr(_MODULES[cfg.family], 'num_tokens', None)
    if hook is not None:
      return hook(height, width, cfg, shared) if self.shared_layout else hook(height, width, cfg)
    th, tw = cfg.tile_size
    return cfg.tokens_per_image or per_side(th) * per_side(tw)

  def sample_tiles(self, processed: ProcessedImage) -> np.ndarray:
    """The rows one image adds to a sample's ``pixel_values``."""
    hook = getattr(_MODULES[self.cfg.family], 'sample_tiles', None)
    return processed.pixels if hook is None else hook(processed, self.cfg)

  def empty_tiles(self) -> np.ndarray:
    """``pixel_values`` of a sample without images."""
    hook = getattr(_MODULES[self.cfg.family], 'empty_tiles', None)
    return np.zeros((0, *self.cfg.tile_size, 3), np.float32) if hook is None else hook(self.cfg)

  def image_features(self, processed: Sequence[ProcessedImage]) -> dict[str, np.ndarray]:
    """The family's arrays per image (``per_image_features``), for a sample's images."""
    hook = getattr(_MODULES[self.cfg.family], 'image_features', None)
    return {} if hook is None else hook(processed, self.cfg)

  def token_features(self, processed: Sequence[ProcessedImage]) -> dict[str, np.ndarray]:
    """The family's arrays per image token (``token_features``): each `[tokens of the sample's
    images, ...]`, in the order of the sample's ``image_token`` placeholders."""
    hook = getattr(_MODULES[self.cfg.family], 'token_features', None)
    return {} if hook is None else hook(processed, self.cfg)

  def tile_features(self, processed: Sequence[ProcessedImage]) -> dict[str, np.ndarray]:
    """The family's arrays per tile (``tile_features``) of a sample's images, concatenated
    (rows beside ``pixel_values``')."""
    hook = getattr(_MODULES[self.cfg.family], 'tile_features', None)
    return {} if hook is None else hook(processed, self.cfg)

  def placeholder_ids(self, height: int, width: int, image_id: int,
                      layout_ids: Sequence[int]) -> np.ndarray | None:
    """The placeholder run (int32 ``[num_tokens]``) of an original image of (height, width),
    with the family's ``LAYOUT_TOKENS`` ids (``layout_ids``) in place; None where the run is
    ``image_id`` throughout."""
    hook = getattr(_MODULES[self.cfg.family], 'placeholder_ids', None)
    return None if hook is None else hook(height, width, self.cfg, image_id, layout_ids)

  def __call__(self, image: Image.Image, shared: bool = False) -> ProcessedImage:
    image = common.to_rgb(image)
    w, h = image.size
    module = _MODULES[self.cfg.family]
    shared = shared and self.shared_layout
    pixels, meta = (module.process(image, self.cfg, shared) if self.shared_layout
                    else module.process(image, self.cfg))
    return ProcessedImage(pixels=pixels, num_tokens=self.num_tokens(h, w, shared),
                          image_size=(h, w), grid_thw=meta.get('grid_thw'),
                          aspect_ratio=meta.get('aspect_ratio'), shared=shared)


def per_image_features(cfg: ImageConfig) -> tuple[str, ...]:
  """Names of the arrays ``ImageProcessor.image_features`` adds per image for this family."""
  return tuple(getattr(_MODULES[cfg.family], 'PER_IMAGE_FEATURES', ()))


def token_features(cfg: ImageConfig) -> tuple[str, ...]:
  """Names of the arrays ``ImageProcessor.token_features`` adds per image token."""
  return tuple(getattr(_MODULES[cfg.family], 'TOKEN_FEATURES', ()))


def layout_tokens(cfg: ImageConfig) -> tuple[str, ...]:
  """The tokens besides ``image_token`` an image's placeholder run holds (their ids go to
  ``ImageProcessor.placeholder_ids``)."""
  return tuple(getattr(_MODULES[cfg.family], 'LAYOUT_TOKENS', ()))


# Every family's per-image arrays (the batch keys flattened as image slots).
ALL_PER_IMAGE_FEATURES = tuple(dict.fromkeys(
    name for module in _MODULES.values() for name in getattr(module, 'PER_IMAGE_FEATURES', ())))


def tile_features(cfg: ImageConfig) -> tuple[str, ...]:
  """Names of the arrays ``ImageProcessor.tile_features`` adds per tile."""
  return tuple(getattr(_MODULES[cfg.family], 'TILE_FEATURES', ()))


# Every family's per-tile arrays (packed beside ``pixel_values``).
ALL_TILE_FEATURES = tuple(dict.fromkeys(
    name for module in _MODULES.values() for name in getattr(module, 'TILE_FEATURES', ())))
# Every family's per-token arrays (packed along the text like ``input_ids``).
ALL_TOKEN_FEATURES = tuple(dict.fromkeys(
    name for module in _MODULES.values() for name in getattr(module, 'TOKEN_FEATURES', ())))


def hf_image_processor_config(cfg: ImageConfig, resample_codes: dict[str, int]) -> dict:
  """The ``preprocessor_config.json`` of the transformers image processor that preprocesses as
  ``cfg`` does (``resample_codes``: PIL's code of each ``resample`` name); ValueError for a
  family without one."""
  hook = getattr(_MODULES[cfg.family], 'hf_settings', None)
  if hook is None:
    with_one = sorted(f for f, m in _MODULES.items() if hasattr(m, 'hf_settings'))
    raise ValueError(f'writing transformers settings for {cfg.family!r} image preprocessing is '
                     f'not supported ({", ".join(with_one)} are)')
  common_settings = dict(
      do_resize=True, resample=resample_codes[cfg.resample], do_rescale=True,
      rescale_factor=cfg.rescale_factor, do_normalize=True, image_mean=list(cfg.mean),
      image_std=list(cfg.std), do_convert_rgb=True)
  return {**hook(cfg), **common_settings}


def check_row_budget(cfg: ImageConfig, max_tiles: int, max_images: int) -> None:
  """ValueError when a packed row's tile and image budgets do not suit this family."""
  hook = getattr(_MODULES[cfg.family], 'check_row_budget', None)
  if hook is not None:
    hook(cfg, max_tiles, max_images)


__all__ = ['ImageConfig', 'ImageProcessor', 'ProcessedImage', 'preset', 'decode_image', 'FAMILIES']

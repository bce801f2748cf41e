"""LLaVA-NeXT AnyRes preprocessing: mmjax's base view + grid tiles equal transformers'
`LlavaNextImageProcessorPil` (1e-5, same tile count and `image_sizes`) and its placeholder count
equals `LlavaNextProcessor`'s expansion of `<image>`, over many sizes and aspect ratios including
extreme ones (1x500, 500x1, 7x333), several pinpoint sets and processor geometries."""

import itertools

import numpy as np
import pytest
from PIL import Image
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil)
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from mmjax.data.preprocess import ImageProcessor, anyres, preset

TINY_PINPOINTS = ((32, 64), (64, 32), (64, 64), (96, 32), (32, 96))
# name -> (shortest_edge, crop, pinpoints, patch size of the vision tower)
GEOMETRIES = {
    "released_336": (336, 336, ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)), 14),
    "tiny_32": (32, 32, TINY_PINPOINTS, 8),
    "tiny_wide_grids": (32, 32, ((32, 32), (32, 128), (128, 32), (96, 96), (64, 160)), 4),
    # transformers resizes and center-crops every view after tiling: non-trivial when they differ
    "resize_40_crop_32": (40, 32, ((32, 64), (64, 32), (64, 64)), 8),
    # pinpoints that are no multiple of the crop: narrower edge tiles, resized and cropped
    "ragged_pinpoints": (32, 32, ((48, 80), (80, 48)), 8),
}
EXTREME = [(1, 500), (500, 1), (7, 333), (333, 7), (1, 1), (2, 3), (1000, 3), (3, 1000)]
PIXEL_SIZES = EXTREME + [(20, 20), (45, 70), (70, 45), (64, 64), (33, 97), (300, 200)]


def _processors(name):
  edge, crop, pinpoints, patch = GEOMETRIES[name]
  hf = LlavaNextImageProcessorPil(size={"shortest_edge": edge},
                                  crop_size={"height": crop, "width": crop},
                                  image_grid_pinpoints=[list(p) for p in pinpoints])
  ours = ImageProcessor(preset("llava_next", shortest_edge=edge, crop_size=crop,
                               grid_pinpoints=pinpoints, patch_size=patch))
  return hf, ours


def _hf_count(hf_image_processor, patch, height, width, class_token: bool, strategy: str) -> int:
  """`LlavaNextProcessor.replace_image_token`'s count, without a tokenizer."""
  processor = object.__new__(LlavaNextProcessor)
  processor.image_processor = hf_image_processor
  processor.patch_size = patch
  processor.num_additional_image_tokens = int(class_token)
  processor.vision_feature_select_strategy = strategy
  crop = hf_image_processor.crop_size
  n = processor._get_number_of_features(height, width, crop["height"], crop["width"])
  return n - 1 if strategy == "default" else n


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_pixels_and_image_sizes_match_transformers(name):
  hf, ours = _processors(name)
  rng = np.random.default_rng(0)
  worst = 0.0
  for h, w in PIXEL_SIZES:
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = hf(images=[image], return_tensors="np")
    got = ours(image)
    ref = out["pixel_values"][0].transpose(0, 2, 3, 1)  # [1 + tiles, H, W, C]
    assert got.pixels.shape == ref.shape, ((h, w), got.pixels.shape, ref.shape)
    assert got.image_size == tuple(out["image_sizes"][0]) == (h, w)
    worst = max(worst, float(np.abs(got.pixels - ref).max()))
  assert worst <= 1e-5, worst


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_token_counts_match_llava_next_processor(name):
  """CLIP towers ('default': the class token is dropped) and SigLIP ones ('full', none) alike."""
  hf, ours = _processors(name)
  patch = GEOMETRIES[name][3]
  sides = (1, 2, 3, 7, 13, 32, 33, 50, 99, 100, 333, 500, 1000)
  for h, w in itertools.chain(itertools.product(sides, sides), EXTREME):
    expected = _hf_count(hf, patch, h, w, class_token=True, strategy="default")
    assert ours.num_tokens(h, w) == expected, (name, h, w)
    assert _hf_count(hf, patch, h, w, class_token=False, strategy="full") == expected


def test_thin_images_keep_no_tile_rows():
  """A 1x500 image in a 2-tile-wide grid covers less than one feature row: unpadding as
  transformers rounds leaves no tile rows (and no newlines), only the base view."""
  _, ours = _processors("tiny_32")
  assert anyres.unpadded_grid(1, 500, 4, 8) == (2, 0, 0, 8)
  assert ours.num_tokens(1, 500) == 16

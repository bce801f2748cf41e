"""Pixtral / Mistral3 preprocessing: mmjax's resized, rescaled and normalised image equals
transformers' `PixtralImageProcessorPil` (1e-5, same `image_sizes`) and its placeholder layout
equals `PixtralProcessor.replace_image_token`'s (`[IMG]` rows, `[IMG_BREAK]`, `[IMG_END]`), over
many sizes and aspect ratios, several longest edges, patch sizes and merge sizes."""

import itertools

import numpy as np
import pytest
from PIL import Image
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from mmjax.data.preprocess import ImageProcessor, pixtral, preset
from pixtral_models import pixtral_processor_class

# name -> (longest edge, tower patch size, spatial merge size)
GEOMETRIES = {
    "pixtral_1024_16": (1024, 16, 1),
    "mistral3_1540_14x2": (1540, 14, 2),
    "tiny_48_4": (48, 4, 1),
    "tiny_50_3x3": (50, 3, 3),
}
EXTREME = [(7, 333), (333, 7), (1, 1), (2, 3), (1000, 3), (3, 1000), (1, 60), (60, 1)]
PIXEL_SIZES = EXTREME + [(20, 20), (45, 70), (70, 45), (64, 64), (33, 97), (300, 200),
                         (1100, 900), (1600, 40)]


def _processors(name):
  edge, patch, merge = GEOMETRIES[name]
  side = patch * merge  # what PixtralProcessor hands its image processor
  hf = PixtralImageProcessorPil(size={"longest_edge": edge},
                                patch_size={"height": side, "width": side})
  ours = ImageProcessor(preset("pixtral", size=edge, patch_size=patch, merge_size=merge))
  return hf, ours


def _hf_layout(name, height, width) -> str:
  """`PixtralProcessor.replace_image_token` for a resized image, tokens spelled I, B, E."""
  _, patch, merge = GEOMETRIES[name]
  processor = object.__new__(pixtral_processor_class())
  processor.patch_size, processor.spatial_merge_size = patch, merge
  processor.image_token, processor.image_break_token, processor.image_end_token = "I", "B", "E"
  return processor.replace_image_token({"image_sizes": [(height, width)]}, 0)


def _thin(name, h, w) -> bool:
  """Sizes transformers cannot process: fitting into the longest edge leaves no pixel row."""
  edge = GEOMETRIES[name][0]
  ratio = max(h, w) / edge
  return ratio > 1 and min(h, w) // ratio < 1


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_pixels_and_image_sizes_match_transformers(name):
  hf, ours = _processors(name)
  rng = np.random.default_rng(0)
  worst, checked = 0.0, 0
  for h, w in PIXEL_SIZES:
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if _thin(name, h, w):  # both refuse it
      with pytest.raises(ValueError, match="keeps no pixel row or column"):
        ours(image)
      with pytest.raises(ValueError, match="height=0|width=0"):
        hf(images=[image], return_tensors="np")
      continue
    out = hf(images=[image], return_tensors="np")
    got = ours(image)
    ref = out["pixel_values"].transpose(0, 2, 3, 1)  # [1, H, W, C]
    assert got.pixels.shape == ref.shape, ((h, w), got.pixels.shape, ref.shape)
    assert tuple(out["image_sizes"][0]) == got.pixels.shape[1:3]
    assert got.image_size == (h, w)
    worst = max(worst, float(np.abs(got.pixels - ref).max()))
    checked += 1
  assert checked >= len(PIXEL_SIZES) - 4
  assert worst <= 1e-5, worst


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_placeholders_match_pixtral_processor(name):
  """Token counts and the `[IMG]` / `[IMG_BREAK]` / `[IMG_END]` layout, from the original size
  (through the resize) as the processor lays them out."""
  hf, ours = _processors(name)
  cfg = ours.cfg
  sides = (1, 2, 3, 7, 13, 32, 33, 50, 99, 100, 333, 500, 1000, 1541, 3000)
  for h, w in itertools.chain(itertools.product(sides, sides), EXTREME):
    if _thin(name, h, w):
      continue
    height, width = pixtral.resized_size(h, w, cfg)
    expected = _hf_layout(name, height, width)
    rows, cols = pixtral.token_grid(h, w, cfg)
    ids = pixtral.image_token_ids(rows, cols, ord("I"), ord("B"), ord("E"))
    assert "".join(map(chr, ids)) == expected, (name, h, w)
    assert ours.num_tokens(h, w) == len(expected), (name, h, w)


def test_resize_matches_transformers_arithmetic():
  """`resized_size` is transformers' `get_resize_output_image_size` for every size up to 3000."""
  from transformers.models.pixtral.image_processing_pil_pixtral import (
      get_resize_output_image_size)

  cfg = preset("mistral3", size=97)
  for h in (1, 5, 14, 27, 28, 29, 96, 97, 98, 500, 2999):
    for w in range(1, 3000, 37):
      ratio = max(h, w) / 97
      if ratio > 1 and min(h, w) // ratio < 1:  # no pixel row left: transformers fails too
        continue
      ref = get_resize_output_image_size(np.zeros((3, h, w)), (97, 97), (28, 28), "channels_first")
      assert pixtral.resized_size(h, w, cfg) == tuple(ref), (h, w)

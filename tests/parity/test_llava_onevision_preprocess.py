"""LLaVA-OneVision preprocessing: mmjax's views equal `LlavaOnevisionImageProcessorPil`'s (1e-5,
the same view count and `image_sizes`) for images alone in their sample (AnyRes) and among
several (padded squares), and the host count of placeholders equals `LlavaOnevisionProcessor`'s
expansion of `<image>` and `<video>` over many sizes and aspect ratios, extreme ones included
(1x500, 500x1, 7x333), several pinpoint sets, tile geometries and `anyres_max_N` budgets."""

import itertools

import numpy as np
import pytest
from PIL import Image
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil)

from llava_onevision_models import counting_processor
from mmjax.data.preprocess import onevision

TINY_PINPOINTS = ((32, 32), (32, 64), (64, 32), (64, 64), (32, 96), (96, 32), (96, 96))
# name -> (tile side, patch size of the tower, pinpoints)
GEOMETRIES = {
    "released_384": (384, 14, onevision.DEFAULT_PINPOINTS),
    "tiny_32": (32, 8, TINY_PINPOINTS),
    "tiny_odd_grid": (24, 8, ((24, 24), (24, 48), (48, 24), (48, 72), (72, 72), (24, 120))),
    "tiny_wide_grids": (32, 4, ((32, 32), (32, 128), (128, 32), (96, 96), (64, 160))),
}
BUDGETS = ("anyres_max_9", "anyres_max_1", "anyres_max_4")
EXTREME = [(1, 500), (500, 1), (7, 333), (333, 7), (1, 1), (2, 3), (1000, 3), (3, 1000)]
PIXEL_SIZES = EXTREME + [(20, 20), (45, 70), (70, 45), (64, 64), (33, 97), (300, 200)]


def _processors(name):
  side, patch, pinpoints = GEOMETRIES[name]
  hf = LlavaOnevisionImageProcessorPil(size={"height": side, "width": side},
                                       image_grid_pinpoints=[list(p) for p in pinpoints])
  return hf, onevision.image_config(side, patch, pinpoints)


def _random(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("name", ["tiny_32", "tiny_odd_grid", "tiny_wide_grids"])
def test_views_and_image_sizes_match_transformers(name):
  hf, cfg = _processors(name)
  worst = 0.0
  for image in _random(PIXEL_SIZES):
    out = hf(images=[image], return_tensors="np")
    got = onevision.processor_arrays([image], cfg)
    assert got["pixel_values"].shape == out["pixel_values"].shape, (image.size, got["pixel_values"].shape)
    np.testing.assert_array_equal(got["image_sizes"], out["image_sizes"])
    np.testing.assert_array_equal(got["batch_num_images"], out["batch_num_images"])
    worst = max(worst, float(np.abs(got["pixel_values"] - out["pixel_values"]).max()))
  images = _random(PIXEL_SIZES[:6], seed=1)  # one sample of six: padded squares, no AnyRes
  out = hf(images=[images], return_tensors="np")
  got = onevision.processor_arrays(images, cfg)
  assert got["pixel_values"].shape == out["pixel_values"].shape == (6, 1, 3, cfg.size[0], cfg.size[1])
  np.testing.assert_array_equal(got["image_sizes"], out["image_sizes"])
  np.testing.assert_array_equal(got["batch_num_images"], out["batch_num_images"])
  worst = max(worst, float(np.abs(got["pixel_values"] - out["pixel_values"]).max()))
  assert worst <= 1e-5, worst


def test_released_geometry_views_match_transformers():
  hf, cfg = _processors("released_384")
  for image in _random([(20, 700), (300, 200), (7, 333)], seed=2):
    out = hf(images=[image], return_tensors="np")["pixel_values"]
    got = onevision.processor_arrays([image], cfg)["pixel_values"]
    assert got.shape == out.shape
    assert float(np.abs(got - out).max()) <= 1e-5


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_token_counts_match_llava_onevision_processor(name):
  """Over 177 sizes each: images alone (three anyres_max budgets) and among several, for towers
  with a class token ('default' drops it) and without ('full'); videos of 1 to 4 frames."""
  hf, cfg = _processors(name)
  side, patch, _ = GEOMETRIES[name]
  g = side // patch
  sides = (1, 2, 3, 7, 13, 32, 33, 50, 99, 100, 333, 500, 1000)
  sizes = list(itertools.product(sides, sides)) + EXTREME
  tile = np.zeros((1, 1, 3, side, side), np.float32)
  for budget in BUDGETS:
    processors = [counting_processor(hf, g * g, "full", budget),
                  counting_processor(hf, g * g + 1, "default", budget)]
    for (h, w), processor, multi in itertools.product(sizes, processors, (False, True)):
      inputs = {"pixel_values": tile, "image_sizes": [[h, w]] * (1 + multi),
                "batch_num_images": [1 + multi]}
      expected = len(processor.replace_image_token(inputs, 0)) // len("<image>")
      got = onevision.num_tokens(h, w, cfg, onevision.max_patches(budget), multi)
      assert got == expected, (name, budget, h, w, multi)
  for frames in range(1, 5):
    video = {"pixel_values_videos": np.zeros((1, frames, 3, side, side), np.float32)}
    expected = len(processors[0].replace_video_token(video, 0)) // len("<video>")
    assert onevision.video_tokens(frames, g) == expected


def test_anyres_max_shrinks_large_grids():
  """The budget matters: a 96x96 image of the tiny geometry fills a 3x3 tile grid (12x12
  features) that anyres_max_4 shrinks to 8x8 (ratio sqrt(144 / 64) = 1.5), anyres_max_1 to 4x4;
  anyres_max_9 keeps it."""
  _, cfg = _processors("tiny_32")
  assert onevision.num_tokens(96, 96, cfg, 9) == 16 + 12 * 12 + 12
  assert onevision.num_tokens(96, 96, cfg, 4) == 16 + 8 * 8 + 8
  assert onevision.num_tokens(96, 96, cfg, 1) == 16 + 4 * 4 + 4
  assert onevision.shrunk(12, 12, 4, 9) is None
  with pytest.raises(ValueError, match="anyres_max_<int>"):
    onevision.max_patches("square")

"""InternVL images end to end: mmjax's dynamic tiling matches transformers' GotOcr2 processor (the
one the `internvl` processor uses) in training (1-12 tiles) and inference (up to 40) settings, and
the whole path, PIL images -> `<img><IMG_CONTEXT>*N</img>` prompt -> logits, matches transformers'."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from hf_models import TOLERANCE, max_diff, record, text_config
from internvl_models import (IMAGE, IMG_END, IMG_START, internvl_config, reference_logits, tiny,
                             vision_config)
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.data.preprocess import ImageProcessor, preset
from mmjax.models.registry import forward_from_hf_inputs

TILE = 32  # the tiny models' tile: 4-px patches, pixel shuffle 2 -> 16 tokens per tile
SIZES = [(30, 45), (9, 200), (64, 64), (100, 17), (31, 330), (150, 140)]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def _processors(min_tiles, max_tiles):
  hf = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, crop_to_patches=True,
                                min_patches=min_tiles, max_patches=max_tiles, image_mean=MEAN,
                                image_std=STD)
  ours = ImageProcessor(preset("internvl", size=TILE, patch_size=4, min_tiles=min_tiles,
                               max_tiles=max_tiles))
  return hf, ours


@pytest.mark.parametrize("min_tiles,max_tiles", [(1, 12), (1, 40), (3, 6)])
def test_tiles_match_transformers(min_tiles, max_tiles):
  """Same grid, tiles and thumbnail (NCHW in HF, NHWC here) and the same token count."""
  hf, ours = _processors(min_tiles, max_tiles)
  for image in _images():
    out = hf(images=[image], return_tensors="np")
    got = ours(image)
    assert got.pixels.shape[0] == out["num_patches"][0]
    np.testing.assert_allclose(got.pixels.transpose(0, 3, 1, 2), out["pixel_values"], atol=1e-5,
                               rtol=0)
    h, w = image.height, image.width
    assert got.num_tokens == 16 * hf.get_number_of_image_patches(h, w, {})


def test_pil_images_to_logits_match_transformers(tmp_path):
  """Two images (a wide one of several tiles + thumbnail, a small one of one tile) in one row."""
  hf_proc, ours = _processors(1, 12)
  images = _images(1)[4:6] + _images(1)[:1]
  hf_cfg = internvl_config(vision_config(), text_config("qwen2"))
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))

  def prompt(counts):  # `<img><IMG_CONTEXT>*N</img>` per image, as InternVLProcessor expands it
    ids = [1, 5, 6]
    for n in counts:
      ids += [IMG_START] + [IMAGE] * n + [IMG_END] + [7]
    return np.array([ids], np.int64)

  processed = [ours(im) for im in images]
  assert processed[0].pixels.shape[0] > 2  # a grid of tiles and the thumbnail
  ids = prompt([p.num_tokens for p in processed])
  ours_inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "pixel_values": np.concatenate([p.pixels for p in processed]).transpose(0, 3, 1, 2)}
  hf_pixels = hf_proc(images=images, return_tensors="np")
  hf_ids = prompt([16 * n for n in hf_pixels["num_patches"]])
  np.testing.assert_array_equal(hf_ids, ids)
  ref = reference_logits(hf_dir, {"input_ids": hf_ids, "attention_mask": np.ones_like(hf_ids),
                                  "pixel_values": hf_pixels["pixel_values"]})
  diff = max_diff(forward_from_hf_inputs(family, config, params, ours_inputs), ref)
  record("internvl/pil_images_to_logits", diff)
  assert diff <= TOLERANCE, diff

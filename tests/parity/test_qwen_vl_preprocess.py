"""Qwen-VL images end to end: mmjax's smart resize + patch flattening (`mmjax.data.preprocess`)
match transformers' processor at a tiny geometry, and the whole path, PIL image -> logits, matches
transformers' processor + model."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil, smart_resize as hf_smart_resize)

from hf_models import TOLERANCE, max_diff, record, save
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.data.preprocess import ImageProcessor, preset
from mmjax.data.preprocess.qwen2_vl import smart_resize
from mmjax.models.registry import forward_from_hf_inputs
from qwen_vl_models import END, IMAGE, START, build, qwen_vl_config, reference_logits

PATCH, MERGE, MIN_PIXELS, MAX_PIXELS = 4, 2, 8 * 8, 24 * 24  # the tiny models' geometry
SIZES = [(30, 45), (9, 70), (64, 64), (17, 23), (100, 40)]  # small, thin, over the budget


def _processors():
  hf = Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
                                min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
  cfg = preset("qwen2_vl", patch_size=PATCH, merge_size=MERGE, min_pixels=MIN_PIXELS,
               max_pixels=MAX_PIXELS)
  return hf, ImageProcessor(cfg), cfg


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def test_smart_resize_matches_transformers():
  for h in range(8, 400, 37):
    for w in range(8, 400, 29):
      for factor, lo, hi in ((28, 56 * 56, 28 * 28 * 1280), (8, MIN_PIXELS, MAX_PIXELS)):
        assert smart_resize(h, w, factor, lo, hi) == hf_smart_resize(h, w, factor, lo, hi), (h, w)


def test_patches_match_transformers_processor():
  hf, ours, cfg = _processors()
  for image in _images():
    out = hf(images=[image], return_tensors="np")
    got = ours(image)
    assert tuple(out["image_grid_thw"][0]) == got.grid_thw
    np.testing.assert_allclose(got.patches(cfg), out["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen3_vl"])
def test_pil_images_to_logits_match_transformers(kind, tmp_path):
  """Two images of different sizes in one row: mmjax preprocessing + model vs HF's."""
  hf_proc, ours, cfg = _processors()
  images = _images(1)[:2]
  hf_cfg = qwen_vl_config(kind)
  model = build(kind, hf_cfg)
  convert_hf(save(model, str(tmp_path / "hf")), str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  processed = [ours(image) for image in images]
  ids = [1, 7]
  for p in processed:
    ids += [START] + [IMAGE] * (int(np.prod(p.grid_thw)) // MERGE**2) + [END, 9]
  ids = np.asarray([ids])
  ref_in = hf_proc(images=images, return_tensors="np")
  ref = reference_logits(model, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                 "mm_token_type_ids": (ids == IMAGE).astype(np.int64),
                                 "pixel_values": ref_in["pixel_values"],
                                 "image_grid_thw": ref_in["image_grid_thw"]})
  ours_logits = forward_from_hf_inputs(family, config, params, {
      "input_ids": ids, "pixel_values": np.concatenate([p.patches(cfg) for p in processed]),
      "image_grid_thw": np.asarray([p.grid_thw for p in processed])})
  diff = max_diff(ours_logits, ref)
  record(f"qwen_vl/pil_to_logits_{kind}", diff)
  assert diff <= TOLERANCE, diff

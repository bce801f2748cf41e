"""Fuyu preprocessing: mmjax's patches equal those FuyuProcessor cuts from
`FuyuImageProcessorPil`'s output (within 1e-5, the same patch grid), and its placeholder ids
equal `FuyuProcessor.replace_image_token`'s layout, over many sizes and aspect ratios (images
smaller than the target, larger, extreme), target sizes and patch sizes."""

import math

import numpy as np
import pytest
from PIL import Image
from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

from mmjax.data.preprocess import fuyu

# name -> (target (h, w), patch)
GEOMETRIES = {"fuyu_1080x1920_30": ((1080, 1920), 30), "tiny_48x64_4": ((48, 64), 4),
              "tiny_30x30_3": ((30, 30), 3)}
SIZES = [(1, 1), (7, 333), (333, 7), (20, 20), (45, 70), (70, 45), (48, 64), (100, 100),
         (1200, 700), (3, 1000), (1500, 2500)]


def _hf_patches(hf, image, patch):
  """`FuyuProcessor._process_images` for one image, on the image processor's output."""
  out = hf(image, return_tensors="np")
  pixels = np.asarray(out["images"][0][0])  # [3, H, W] padded to the target
  new_h = min(pixels.shape[1], math.ceil(out["image_unpadded_heights"][0][0] / patch) * patch)
  new_w = min(pixels.shape[2], math.ceil(out["image_unpadded_widths"][0][0] / patch) * patch)
  return hf.patchify_image(pixels[:, :new_h, :new_w]), (new_h // patch, new_w // patch)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_patches_match_fuyu_image_processor(name):
  size, patch = GEOMETRIES[name]
  hf = FuyuImageProcessorPil(size={"height": size[0], "width": size[1]},
                             patch_size={"height": patch, "width": patch})
  rng = np.random.default_rng(0)
  for h, w in SIZES:
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    try:
      expected, grid = _hf_patches(hf, image, patch)
    except ValueError:  # shrunk to no pixel row or column: refused by both
      with pytest.raises(ValueError, match="too extreme"):
        fuyu.process(image, size, patch)
      continue
    ours, our_grid = fuyu.process(image, size, patch)
    assert our_grid == grid == fuyu.patch_grid(h, w, size, patch), (h, w)
    assert ours.shape == expected.shape, (h, w)
    np.testing.assert_allclose(ours, expected, atol=1e-5, err_msg=f"{h}x{w}")
    assert ours.min() >= -1 and ours.max() <= 1


def test_placeholders_match_the_processor_layout():
  from transformers.models.fuyu.processing_fuyu import FuyuProcessor

  processor = object.__new__(FuyuProcessor)
  processor.image_token, processor.image_newline_token = "S", "N"
  for rows, cols in [(1, 1), (2, 3), (36, 64), (5, 1)]:
    text = processor.replace_image_token({}, image_idx=0, num_patches=rows * cols, row_width=cols)
    ids = fuyu.image_token_ids(rows, cols, speaker_id=7, newline_id=9)
    assert "".join("S" if i == 7 else "N" for i in ids) + "<s>" == text

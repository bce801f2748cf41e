"""Pixel parity with transformers' PIL image processors (1e-5), and image token counts."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from mmjax.data.preprocess import ImageProcessor, preset

TOL = 1e-5
SIZES = [(50, 80), (300, 200), (37, 113), (336, 336), (500, 90), (20, 20)]


def _images():
  rng = np.random.default_rng(0)
  images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
  images.append(Image.fromarray(rng.integers(0, 256, (60, 40, 4), dtype=np.uint8), 'RGBA'))
  images.append(Image.fromarray(rng.integers(0, 256, (60, 70), dtype=np.uint8), 'L'))
  return images


IMAGES = _images()

CASES = {
    'blip2': lambda: BlipImageProcessorPil(size={'height': 224, 'width': 224}),
    'clip336': lambda: CLIPImageProcessorPil(size={'shortest_edge': 336}, crop_size={'height': 336, 'width': 336}),
    'llava15': lambda: LlavaImageProcessorPil(size={'shortest_edge': 336}, crop_size={'height': 336, 'width': 336},
                                              do_pad=True),
    'siglip384': lambda: SiglipImageProcessorPil(size={'height': 384, 'width': 384}),
    'llava_next': lambda: LlavaNextImageProcessorPil(size={'shortest_edge': 336},
                                                     crop_size={'height': 336, 'width': 336}),
    'internvl': lambda: GotOcr2ImageProcessorPil(size={'height': 448, 'width': 448}, crop_to_patches=True,
                                                 max_patches=12, image_mean=[0.485, 0.456, 0.406],
                                                 image_std=[0.229, 0.224, 0.225]),
    'qwen2_vl': lambda: Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
}


def _hf_nhwc(pixel_values):
  ref = np.asarray(pixel_values)
  if ref.ndim == 5:  # LLaVA-NeXT: [1, n_tiles, C, H, W]
    ref = ref[0]
  return ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref.transpose(1, 2, 0)[None]


@pytest.mark.parametrize('name', sorted(CASES))
def test_pixel_parity(name):
  hf = CASES[name]()
  cfg = preset(name)
  ours = ImageProcessor(cfg)
  worst = 0.0
  for image in IMAGES:
    out = hf(images=[image], return_tensors='np')
    got = ours(image)
    if name == 'qwen2_vl':
      ref, mine = np.asarray(out['pixel_values']), got.patches(cfg)
      assert tuple(out['image_grid_thw'][0]) == got.grid_thw
    else:
      ref, mine = _hf_nhwc(out['pixel_values']), got.pixels
    assert mine.dtype == np.float32
    assert ref.shape == mine.shape, (image.size, ref.shape, mine.shape)
    worst = max(worst, float(np.abs(ref - mine).max()))
  print(f'{name}: max abs diff {worst:.3g}')
  assert worst <= TOL


def test_small_crop_sizes_parity():
  """A non-default geometry: shortest edge 32, crop 28 (padding path of center crop for tiny images)."""
  hf = CLIPImageProcessorPil(size={'shortest_edge': 32}, crop_size={'height': 28, 'width': 28})
  ours = ImageProcessor(preset('clip224', shortest_edge=32, crop_size=28))
  for image in IMAGES:
    ref = _hf_nhwc(hf(images=[image], return_tensors='np')['pixel_values'])
    np.testing.assert_allclose(ours(image).pixels, ref, atol=TOL, rtol=0)


def test_token_counts_match_hf():
  # LLaVA-NeXT: HF's processor formula (num_additional_image_tokens=1 with 'default' = patches only).
  hf_next = object.__new__(LlavaNextProcessor)
  hf_next.image_processor = CASES['llava_next']()
  hf_next.patch_size, hf_next.num_additional_image_tokens = 14, 0
  nxt = ImageProcessor(preset('llava_next'))
  got_ocr = CASES['internvl']()
  internvl = ImageProcessor(preset('internvl'))
  qwen = CASES['qwen2_vl']()
  qwen_ours = ImageProcessor(preset('qwen2_vl'))
  for h, w in SIZES + [(1000, 700), (224, 1500)]:
    assert nxt.num_tokens(h, w) == hf_next._get_number_of_features(h, w, 336, 336)
    assert internvl.num_tokens(h, w) == 256 * got_ocr.get_number_of_image_patches(h, w)
    assert qwen_ours.num_tokens(h, w) == qwen.get_number_of_image_patches(h, w) // 4
  assert ImageProcessor(preset('llava15')).num_tokens(10, 999) == 576
  assert ImageProcessor(preset('siglip384')).num_tokens(10, 10) == (384 // 14) ** 2

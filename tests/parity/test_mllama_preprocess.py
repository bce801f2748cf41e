"""Llama 3.2 Vision preprocessing: mmjax's tiles, aspect-ratio ids/masks and cross-attention mask
equal transformers' `MllamaImageProcessorPil` and `MllamaProcessor`."""

import json

import numpy as np
import pytest
import transformers
from PIL import Image
from transformers.models.mllama import processing_mllama
from transformers.models.mllama.image_processing_pil_mllama import (MllamaImageProcessorPil,
                                                                   get_optimal_tiled_canvas)

from mmjax.data.preprocess import common, mllama
from mmjax.data.tokenizer import train_tiny_tokenizer

# Extreme aspect ratios, tiny images, exact multiples of 14 and 16 px tiles, larger than the
# largest canvas (4 tiles of 32 px = 128 px).
SIZES = [(1, 500), (500, 1), (5, 7), (16, 16), (32, 32), (16, 64), (64, 16), (28, 56), (14, 14),
         (42, 14), (300, 200), (17, 100), (33, 31), (200, 900), (48, 48)]


def _images(sizes=SIZES, seed=0):
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _ours(rows, cfg):
  """`pack` of `process` per image, and the tiles per image."""
  processed = [[mllama.process(image, cfg) for image in row] for row in rows]
  packed = mllama.pack([[(tiles, meta['aspect_ratio']) for tiles, meta in row]
                        for row in processed], cfg.max_tiles)
  return packed, [[meta['num_tiles'] for _, meta in row] for row in processed]


@pytest.mark.parametrize('tile', [14, 16, 32])
@pytest.mark.parametrize('max_tiles', [1, 2, 3, 4])
def test_pixels_ids_and_masks_match_transformers(tile, max_tiles):
  """Two rows, the second with fewer images (padded as the processor pads it)."""
  hf = MllamaImageProcessorPil(size={'height': tile, 'width': tile}, max_image_tiles=max_tiles,
                               image_mean=list(common.OPENAI_CLIP_MEAN),
                               image_std=list(common.OPENAI_CLIP_STD))
  cfg = mllama.MllamaImageConfig.from_hf(hf.to_dict())
  assert cfg == mllama.MllamaImageConfig(size=(tile, tile), max_tiles=max_tiles)
  images = _images()
  rows = [images[:10], images[10:]]
  ref = hf(images=rows, return_tensors='np')
  ours, tiles = _ours(rows, cfg)
  assert tiles == ref['num_tiles']
  assert ours['pixel_values'].shape == ref['pixel_values'].shape
  np.testing.assert_allclose(ours['pixel_values'], ref['pixel_values'], atol=1e-5, rtol=0)
  for name in ('aspect_ratio_ids', 'aspect_ratio_mask'):
    np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
  ratio_ids = [ref['aspect_ratio_ids'][b, i] for b, row in enumerate(rows) for i in range(len(row))]
  for image, n, ratio_id in zip(images, sum(tiles, []), ratio_ids):
    ratio = mllama.aspect_ratio(image.height, image.width, cfg)
    assert mllama.aspect_ratio_id(ratio, max_tiles) == ratio_id
    assert mllama.num_tiles(image.height, image.width, cfg) == n
    assert mllama.num_tokens(image.height, image.width, cfg) == 1


@pytest.mark.parametrize('settings', [
    dict(resample=3),  # bicubic
    dict(resample=0, do_normalize=False),  # nearest
    dict(resample=1, do_rescale=False, image_mean=[0.2, 0.3, 0.4], image_std=[0.9, 0.8, 0.7]),
    dict(resample=5, do_rescale=False, do_normalize=False),  # hamming, raw uint8 values
])
def test_preprocessor_config_settings_are_honoured(settings):
  """A `preprocessor_config.json` (through JSON, as read from disk) configures the same processing;
  the bilinear default would differ."""
  hf = MllamaImageProcessorPil(size={'height': 16, 'width': 16}, max_image_tiles=4, **settings)
  cfg = mllama.MllamaImageConfig.from_hf(json.loads(json.dumps(hf.to_dict())))
  rows = [_images(SIZES[:8], seed=1)]
  ref = hf(images=rows, return_tensors='np')
  ours, _ = _ours(rows, cfg)
  np.testing.assert_allclose(ours['pixel_values'], ref['pixel_values'], atol=1e-5, rtol=0)
  bilinear, _ = _ours(rows, mllama.MllamaImageConfig(**{**cfg.__dict__, 'resample': 'bilinear'}))
  assert np.abs(bilinear['pixel_values'] - ref['pixel_values']).max() > 1e-3


def test_canvas_ties_and_downscaling():
  """Ties between grids of equal scale go to the smaller area; images too big for every grid take
  the grid that shrinks them least."""
  for h, w in [(5, 7), (1, 500), (500, 1), (300, 200), (64, 64), (20, 16), (33, 31)]:
    for max_tiles in (1, 2, 3, 4, 6):
      got = mllama.optimal_tiled_canvas(h, w, max_tiles, 16)
      want = tuple(int(v) for v in get_optimal_tiled_canvas(h, w, max_tiles, 16))
      assert got == want, (h, w, max_tiles)


IMAGE = 7  # the image token id in the hand-written rows below; 0 is padding
TOKEN_ROWS = {
    'no_images': [[1, 2, 3], [0, 4, 5]],
    'one_image_left_padded': [[0, 0, IMAGE, 1, 2], [IMAGE, 3, 4, 5, 6]],
    'separate_images': [[1, IMAGE, 2, 3, IMAGE, 4, 5, IMAGE, 6]],
    'consecutive_then_separate': [[IMAGE, IMAGE, 1, 2, IMAGE, 3], [0, 0, 1, IMAGE, IMAGE, IMAGE]],
    'trailing_image_token': [[1, 2, IMAGE], [IMAGE, 1, IMAGE]],
    # Unpadded rows of different lengths: a lone image sees up to the longest row's end.
    'ragged_rows': [[IMAGE, 1], [1, 2, IMAGE, 3, 4, IMAGE], [1, 2, 3, 4, 5, 6, 8]],
}


@pytest.mark.parametrize('name', sorted(TOKEN_ROWS))
def test_cross_attention_mask_matches_transformers_functions(name):
  rows = TOKEN_ROWS[name]
  tiles = [[(b + i) % 4 + 1 for i in range(row.count(IMAGE))] for b, row in enumerate(rows)]
  sparse = [processing_mllama.get_cross_attention_token_mask(row, IMAGE) for row in rows]
  assert [mllama.cross_attention_token_mask(row, IMAGE) for row in rows] == [
      [tuple(span) for span in row] for row in sparse]
  ref = processing_mllama.convert_sparse_cross_attention_mask_to_dense(
      sparse, tiles, max_num_tiles=4, length=max(len(row) for row in rows))
  ours = mllama.cross_attention_mask(rows, IMAGE, tiles, 4)
  assert ours.shape == ref.shape
  np.testing.assert_array_equal(ours, ref)


def _processor(tile: int, max_tiles: int) -> transformers.MllamaProcessor:
  specials = ('<unk>', '<|begin_of_text|>', '<|image|>', '<|python_tag|>', '<pad>')
  corpus = ['describe the image', 'a photo of a cat', 'what is in these pictures?']
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=train_tiny_tokenizer(corpus, special_tokens=specials, vocab_size=120,
                                            bos=None),
      bos_token='<|begin_of_text|>', pad_token='<pad>', unk_token='<unk>', padding_side='left')
  return transformers.MllamaProcessor(
      image_processor=MllamaImageProcessorPil(size={'height': tile, 'width': tile},
                                              max_image_tiles=max_tiles),
      tokenizer=tokenizer)


def test_processor_batch_matches_transformers():
  """MllamaProcessor end to end: left-padded rows with consecutive and separate image tokens."""
  processor = _processor(16, 4)
  images = _images([(10, 40), (40, 10), (16, 16), (5, 300)], seed=2)
  rows = [images[:2], images[2:]]
  text = ['<|image|><|image|>describe the image',
          'a photo <|image|> of a cat <|image|> what is in these pictures?']
  ref = processor(images=rows, text=text, padding=True, return_tensors='np')
  cfg = mllama.MllamaImageConfig.from_hf(processor.image_processor.to_dict())
  ours, tiles = _ours(rows, cfg)
  for name in ('aspect_ratio_ids', 'aspect_ratio_mask'):
    np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
  np.testing.assert_allclose(ours['pixel_values'], ref['pixel_values'], atol=1e-5, rtol=0)
  image_id = processor.tokenizer.convert_tokens_to_ids('<|image|>')
  mask = mllama.cross_attention_mask(ref['input_ids'].tolist(), image_id, tiles, cfg.max_tiles)
  assert ref['input_ids'][0, 0] == processor.tokenizer.pad_token_id  # left padding is exercised
  np.testing.assert_array_equal(mask, ref['cross_attention_mask'])


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match='square'):
    mllama.process(_images([(8, 8)])[0], mllama.MllamaImageConfig(size=(16, 32)))
  with pytest.raises(ValueError, match='at least one image'):
    mllama.pack([[], []], 4)
  tiles = np.zeros((3, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match='3 tiles for aspect ratio'):
    mllama.pack([[(tiles, (2, 2))]], 4)

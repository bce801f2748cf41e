"""One sample -> example: placeholders expanded, labels shifted, loss on assistant turns, truncation."""

import dataclasses

import numpy as np
import pytest

from mmjax.data.pipeline import DataConfig
from mmjax.data.preprocess import preset
from mmjax.data.sample import SampleProcessor, mrope_positions
from mmjax.data.validation import SampleError

SMALL = preset('llava15', shortest_edge=28, crop_size=28)  # 2x2 patches of 14 -> 4 tokens per image


def _cfg(**kw):
  return DataConfig(**{'image': SMALL, 'max_length': 256, 'max_tiles': 8, 'max_images': 8, **kw})


def _raw(images, messages, sample_id='x'):
  return {'id': sample_id, 'images': images, 'messages': messages}


def _conv(n_images=1, answer='A red square.'):
  return [{'role': 'user', 'content': '<image>\n' * n_images + 'What is in the picture?'},
          {'role': 'assistant', 'content': answer}]


def test_vicuna_example(tokenizer, tmp_path, make_image):
  path = str(make_image(tmp_path / 'a.png', 40, 60))
  proc = SampleProcessor(_cfg(), tokenizer)
  ex = proc(_raw([path], _conv()))
  image_id = tokenizer.token_to_id('<image>')
  ids, labels, mask = ex['input_ids'], ex['labels'], ex['loss_mask']
  assert ids.dtype == np.int32 and labels.dtype == np.int32 and mask.dtype == np.float32
  assert ids[0] == tokenizer.token_to_id('<s>')
  assert (ids == image_id).sum() == 4  # the one placeholder, expanded
  np.testing.assert_array_equal(labels[:-1], ids[1:])
  assert labels[-1] == 0 and mask[-1] == 0
  # Supervised targets decode to exactly the answer and the end-of-turn token.
  assert tokenizer.decode(labels[mask > 0]) == ' A red square.</s>'
  assert labels[mask > 0][-1] == tokenizer.token_to_id('</s>')
  assert ex['pixel_values'].shape == (1, 28, 28, 3)
  np.testing.assert_array_equal(ex['image_sizes'], [[40, 60]])
  np.testing.assert_array_equal(ex['image_tiles'], [1])


def test_text_only_and_multi_turn(tokenizer):
  proc = SampleProcessor(_cfg(), tokenizer)
  messages = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello.'},
              {'role': 'user', 'content': 'Why?'}, {'role': 'assistant', 'content': 'Because.'}]
  ex = proc(_raw([], messages))
  assert ex['pixel_values'].shape == (0, 28, 28, 3) and ex['image_sizes'].shape == (0, 2)
  assert tokenizer.decode(ex['labels'][ex['loss_mask'] > 0]) == ' Hello.</s> Because.</s>'


def test_internvl_wrappers_and_tiles(tokenizer, tmp_path, make_image):
  path = str(make_image(tmp_path / 'wide.png', 30, 100))
  image = preset('internvl', size=28, max_tiles=6)  # 28 px tiles, 2x2 patches, pixel shuffle 2 -> 1 token/tile
  cfg = _cfg(image=image, template='internvl', image_token='<IMG_CONTEXT>', image_start='<img>', image_end='</img>')
  ex = SampleProcessor(cfg, tokenizer)(_raw([path], _conv()))
  ids = ex['input_ids']
  n_tiles = ex['pixel_values'].shape[0]
  assert n_tiles > 1 and ex['image_tiles'][0] == n_tiles  # grid tiles + thumbnail
  ctx = np.flatnonzero(ids == tokenizer.token_to_id('<IMG_CONTEXT>'))
  assert len(ctx) == n_tiles and np.all(np.diff(ctx) == 1)
  assert ids[ctx[0] - 1] == tokenizer.token_to_id('<img>') and ids[ctx[-1] + 1] == tokenizer.token_to_id('</img>')
  assert tokenizer.decode(ex['labels'][ex['loss_mask'] > 0]) == 'A red square.<|im_end|>\n'


def test_truncation_never_cuts_an_image(tokenizer, tmp_path, make_image):
  paths = [str(make_image(tmp_path / f'{i}.png', 30, 30, seed=i)) for i in range(2)]
  messages = [{'role': 'user', 'content': '<image> first'}, {'role': 'assistant', 'content': 'one two three'},
              {'role': 'user', 'content': '<image> second'}, {'role': 'assistant', 'content': 'four five six'}]
  full = SampleProcessor(_cfg(), tokenizer)(_raw(paths, messages))
  image_id = tokenizer.token_to_id('<image>')
  second_image = np.flatnonzero(full['input_ids'] == image_id)[4]
  for max_length in range(second_image, second_image + 4):  # every cut inside the second image
    ex = SampleProcessor(_cfg(max_length=max_length), tokenizer)(_raw(paths, messages))
    assert len(ex['input_ids']) == second_image <= max_length
    assert (ex['input_ids'] == image_id).sum() == 4 and ex['pixel_values'].shape[0] == 1
  with pytest.raises(SampleError) as e:
    SampleProcessor(_cfg(max_length=len(full['input_ids']) - 1, truncate=False), tokenizer)(_raw(paths, messages))
  assert e.value.reason == 'too_long'
  with pytest.raises(SampleError) as e:  # The first answer starts after the cut: nothing to learn.
    SampleProcessor(_cfg(max_length=10), tokenizer)(_raw(paths, messages))
  assert e.value.reason == 'too_long'


@pytest.mark.parametrize('case,reason', [
    ('missing', 'missing_image'), ('corrupt', 'corrupt_image'), ('mismatch', 'image_count_mismatch'),
    ('empty', 'empty_conversation'), ('no_answer', 'empty_conversation'), ('error', 'bad_record'),
    ('tiles', 'too_many_images'),
])
def test_bad_samples_raise_sample_error(tokenizer, tmp_path, make_image, case, reason):
  good = str(make_image(tmp_path / 'ok.png', 20, 20))
  corrupt = tmp_path / 'bad.png'
  corrupt.write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
  raw = {
      'missing': _raw([str(tmp_path / 'nope.png')], _conv()),
      'corrupt': _raw([str(corrupt)], _conv()),
      'mismatch': _raw([good, good], _conv(1)),
      'empty': _raw([], []),
      'no_answer': _raw([], [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': ' '}]),
      'error': {'id': 'e', 'images': [], 'messages': [], 'error': ('bad_record', 'broken')},
      'tiles': _raw([good] * 3, _conv(3)),
  }[case]
  cfg = _cfg(max_tiles=2) if case == 'tiles' else _cfg()
  with pytest.raises(SampleError) as e:
    SampleProcessor(cfg, tokenizer)(dict(raw, id='sample-7'))
  assert e.value.reason == reason and 'sample-7' in str(e.value)


def test_qwen2_vl_patches_and_mrope(tokenizer, tmp_path, make_image):
  path = str(make_image(tmp_path / 'q.png', 60, 90))
  image = preset('qwen2_vl', min_pixels=28 * 28, max_pixels=56 * 56)
  cfg = _cfg(image=image, template='chatml', image_token='<|image_pad|>', image_start='<|vision_start|>',
             image_end='<|vision_end|>', mrope=True, max_tiles=64)
  ex = SampleProcessor(cfg, tokenizer)(_raw([path], _conv()))
  t, gh, gw = ex['image_grid_thw'][0]
  assert ex['pixel_values'].shape == (gh * gw, 3 * 2 * 14 * 14)
  n_tokens = (ex['input_ids'] == tokenizer.token_to_id('<|image_pad|>')).sum()
  assert n_tokens == gh * gw // 4
  pos = ex['mrope_positions']
  start = np.flatnonzero(ex['input_ids'] == tokenizer.token_to_id('<|image_pad|>'))[0]
  np.testing.assert_array_equal(pos[:start], np.repeat(np.arange(start)[:, None], 3, 1))
  np.testing.assert_array_equal(pos[start + n_tokens], [start + max(gh, gw) // 2] * 3)  # text resumes at max + 1


def test_mrope_positions_layout():
  ids = np.array([5, 5, 9, 9, 9, 9, 9, 9, 5])  # 2 text, an image of 1x2x3 merged tokens, 1 text
  pos = mrope_positions(ids, 9, [(1, 4, 6)], merge_size=2)
  np.testing.assert_array_equal(pos[:, 0], [0, 1, 2, 2, 2, 2, 2, 2, 5])
  np.testing.assert_array_equal(pos[:, 1], [0, 1, 2, 2, 2, 3, 3, 3, 5])
  np.testing.assert_array_equal(pos[:, 2], [0, 1, 2, 3, 4, 2, 3, 4, 5])


def test_config_from_dict():
  cfg = DataConfig.from_dict({'image_preset': 'siglip384', 'image_overrides': {'size': 224}, 'max_length': 64,
                              'sources': [{'path': 'x.json', 'weight': 0.5}]})
  assert cfg.image.tile_size == (224, 224) and cfg.sources[0].weight == 0.5
  assert dataclasses.replace(cfg, max_length=8).max_length == 8
  with pytest.raises(ValueError, match='unknown data config keys'):
    DataConfig.from_dict({'max_lenght': 3})


def test_decompression_bomb_is_skipped_not_fatal(tokenizer, tmp_path):
  from hostile_files import bomb_png
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(bomb_png())
  for ref in (str(bomb), bomb.read_bytes()):  # a file, and bytes embedded by `data pack`
    with pytest.raises(SampleError) as e:
      SampleProcessor(_cfg(), tokenizer)(_raw([ref], _conv(), 'bomb-1'))
    assert e.value.reason == 'image_too_large' and 'bomb-1' in str(e.value)


@pytest.mark.parametrize('ref', [123, None, [1, 2], {'path': 'a.png'}])
def test_image_reference_of_the_wrong_type_is_a_bad_record(tokenizer, ref):
  with pytest.raises(SampleError) as e:
    SampleProcessor(_cfg(), tokenizer)(_raw([ref], _conv()))
  assert e.value.reason == 'bad_record'


@pytest.mark.parametrize('messages', [[{'role': 'user', 'content': 5}], 'hello', [['user', 'hi']]])
def test_malformed_messages_are_a_bad_record(tokenizer, messages):
  with pytest.raises(SampleError) as e:
    SampleProcessor(_cfg(), tokenizer)(_raw([], messages))
  assert e.value.reason == 'bad_record'


def test_chat_template_rejection_is_a_skip(tokenizer_dir, tmp_path):
  import json
  import shutil

  from hostile_files import ALTERNATING_TEMPLATE
  from mmjax.data.tokenizer import Tokenizer
  shutil.copy(f'{tokenizer_dir}/tokenizer.json', tmp_path / 'tokenizer.json')
  config = {'chat_template': ALTERNATING_TEMPLATE}
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(config))
  processor = SampleProcessor(_cfg(template='tokenizer'), Tokenizer.load(str(tmp_path)))
  assert len(processor(_raw([], _conv(0)))['input_ids'])  # alternating: fine
  twice = [{'role': 'user', 'content': 'Hi.'}, {'role': 'user', 'content': 'Hi?'},
           {'role': 'assistant', 'content': 'Yes.'}]
  with pytest.raises(SampleError) as e:
    processor(_raw([], twice, 'rude'))
  assert e.value.reason == 'template_error' and 'roles must alternate' in str(e.value)


def test_onevision_alone_anyres_shared_one_view(tokenizer, tmp_path, make_image):
  """LLaVA-OneVision: an image alone takes its AnyRes views (shrunk past anyres_max_N) and an
  image among several one padded square, as LlavaOnevisionProcessor lays them out
  (`onevision.processor_arrays`, parity-tested); every token's four sources and weights are the
  inference layout's (tiles of the sample, tile -1 for the newline)."""
  from PIL import Image
  from mmjax.data.preprocess import onevision
  from mmjax.models.onevision_layout import feature_layout

  pinpoints = ((28, 56), (56, 28), (56, 56))
  image = preset('llava_onevision', size=28, grid_pinpoints=pinpoints, max_tiles=1)  # g = 2
  proc = SampleProcessor(_cfg(image=image, max_tiles=16), tokenizer)
  paths = [str(make_image(tmp_path / f'{i}.png', h, w)) for i, (h, w) in enumerate([(50, 56), (20, 40)])]
  for images in ([paths[0]], paths):
    ex = proc(_raw(images, _conv(len(images))))
    pil = [Image.open(p).convert('RGB') for p in images]
    ref = onevision.processor_arrays(pil, image)
    tiles = ex['image_tiles']
    views = np.concatenate([v[:n] for v, n in zip(ref['pixel_values'], tiles)])
    np.testing.assert_array_equal(ex['pixel_values'], np.transpose(views, (0, 2, 3, 1)))
    shared = [len(images) > 1] * len(images)
    counts, (index, weights), _ = feature_layout(ex['image_sizes'], shared, [], 2, pinpoints, 28, 1)
    assert list(tiles) == counts and (len(images) > 1) == (max(counts) == 1)
    slots = ex['input_ids'] == tokenizer.token_to_id('<image>')
    assert slots.sum() == sum(onevision.num_tokens(h, w, image, 1, len(images) > 1)
                              for h, w in ex['image_sizes'])
    source, newline = ex['image_token_source'][slots], sum(counts) * 4
    np.testing.assert_array_equal(np.where(source[..., 0] >= 0, source[..., 0] * 4 + source[..., 1],
                                           newline), index)
    np.testing.assert_array_equal(ex['image_token_weights'][slots], weights)
    assert (ex['image_token_source'][~slots] == -1).all()
    if len(images) == 1:  # its 4x4 grid shrunk to 2x2 (anyres_max_1): real bilinear mixes
      assert np.any((weights > 0) & (weights < 1))


def test_onevision_video_frames_are_tiles_and_pooled_tokens(tokenizer):
  """LLaVA-OneVision with a video beside an image: the sampled frames, resized to the tile square,
  follow the image's tiles (one media slot, `image_is_video` 1); the `<video>` placeholder takes
  frames * ceil(g / 2)^2 + 1 video tokens whose four sources and weights are the inference
  layout's (g = 3: 3x3 features pooled to 2x2, rounding up: real bilinear mixes), and a cut
  through the video drops it whole."""
  from PIL import Image
  from mmjax.data.onevision_sample import OnevisionSampleProcessor
  from mmjax.data.preprocess import common, onevision
  from mmjax.data.video import VideoConfig
  from mmjax.models.onevision_layout import feature_layout

  pinpoints = ((42, 84), (84, 42), (84, 84))
  image = preset('llava_onevision', size=42, grid_pinpoints=pinpoints, max_tiles=1)  # g = 3
  video = VideoConfig(token='<|image_pad|>', min_frames=2, max_frames=3)  # any vocabulary token
  rng = np.random.default_rng(0)
  clip = rng.integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
  picture = rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)
  messages = [{'role': 'user', 'content': '<image>\n<video>\nWhat happens?'},
              {'role': 'assistant', 'content': 'A red square.'}]
  raw = {**_raw([picture], messages), 'videos': [clip]}
  proc = OnevisionSampleProcessor(_cfg(image=image, max_tiles=16, video=video), tokenizer)
  ex = proc(raw)
  video_id = tokenizer.token_to_id('<|image_pad|>')
  frames = [0, 1, 3]  # 3 of 5 frames, transformers' sample_frames indices
  assert (ex['input_ids'] == video_id).sum() == onevision.video_tokens(3, 3) == 3 * 4 + 1
  tiles = int(ex['image_tiles'][0])
  np.testing.assert_array_equal(ex['image_tiles'], [tiles, 3])
  np.testing.assert_array_equal(ex['image_is_video'], [0, 1])
  np.testing.assert_array_equal(ex['image_sizes'], [[50, 40], [20, 30]])
  want = [common.normalize(common.resize(Image.fromarray(clip[f]), 42, 42, image.resample),
                           image.mean, image.std, image.rescale_factor) for f in frames]
  np.testing.assert_array_equal(ex['pixel_values'][tiles:], np.stack(want))
  _, (i_index, i_weights), (v_index, v_weights) = feature_layout(
      [(50, 40)], [False], [3], 3, pinpoints, 42, 1)
  newline = (tiles + 3) * 9
  for token, index, weights in ((tokenizer.token_to_id('<image>'), i_index, i_weights),
                                (video_id, v_index, v_weights)):
    source = ex['image_token_source'][ex['input_ids'] == token]
    np.testing.assert_array_equal(
        np.where(source[..., 0] >= 0, source[..., 0] * 9 + source[..., 1], newline), index)
    np.testing.assert_array_equal(ex['image_token_weights'][ex['input_ids'] == token], weights)
  assert np.any((v_weights > 0) & (v_weights < 1))
  later = {**raw, 'messages': [  # the video in a second turn: a cut through it keeps the first
      {'role': 'user', 'content': '<image>\nWhat is it?'}, messages[1],
      {'role': 'user', 'content': '<video>\nWhat happens?'}, messages[1]]}
  full = proc(later)
  end = int(np.flatnonzero(full['input_ids'] == video_id)[0]) + 5
  cut = OnevisionSampleProcessor(_cfg(image=image, max_tiles=16, video=video, max_length=end),
                                 tokenizer)(later)
  assert len(cut['input_ids']) == end - 5 and not (cut['input_ids'] == video_id).any()
  np.testing.assert_array_equal(cut['image_is_video'], [0])
  np.testing.assert_array_equal(cut['pixel_values'], full['pixel_values'][:tiles])
  assert (cut['image_token_source'][cut['input_ids'] != tokenizer.token_to_id('<image>')] == -1).all()

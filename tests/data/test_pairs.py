"""Preference pairs in the data pipeline: records, one image decode per pair, both answers in one
pair row, packing that keeps pairs together, and the reference columns in pair order."""

import json

import numpy as np
import pytest

from mmjax.data import pairs, sample
from mmjax.data.pipeline import DataConfig, make_iterator
from mmjax.data.sources import open_source


def _config(tokenizer_dir, path, **kw):
  return DataConfig.from_dict(dict(
      image_preset='clip224', image_overrides=dict(shortest_edge=32, crop_size=32, patch_size=16),
      template='chatml', tokenizer=tokenizer_dir, max_tiles=4, max_images=4, batch_size=2,
      shuffle=False, sources=[dict(path=str(path))], pairs=True, **kw))


def _write(tmp_path, records, make_image):
  for i in range(len(records)):
    make_image(tmp_path / f'{i}.png', 24, 30, seed=i)
  path = tmp_path / 'pairs.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return path


def test_records_normalize_and_bad_ones_are_named(tmp_path, make_image):
  records = [
      {'id': 'a', 'image': '0.png', 'prompt': 'What is it?', 'chosen': 'A cat.',
       'rejected': [{'role': 'assistant', 'content': 'A dog.'}]},
      {'id': 'b', 'image': '1.png', 'conversations': [
          {'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello.'},
          {'from': 'human', 'value': '<image>\nAnd this?'}], 'chosen': 'A cat.',
       'rejected': 'A dog.', 'ref_chosen_logps': -1.5, 'ref_rejected_logps': -2},
      {'id': 'c', 'question': 'Q?', 'chosen': 'A.', 'rejected': 'B.'},  # MMPR's key, no image
      {'id': 'd', 'prompt': 'Q?', 'chosen': 'A.'},
      {'id': 'e', 'conversations': [{'from': 'human', 'value': 'Q'}, {'from': 'gpt', 'value': 'A'}],
       'chosen': 'A.', 'rejected': 'B.'},
      {'id': 'f', 'prompt': 'Q?', 'chosen': 'A.', 'rejected': 'B.', 'ref_chosen_logps': -1.0},
  ]
  source = open_source(str(_write(tmp_path, records, make_image)), pairs=True)
  a, b, c, d, e, f = (source[i] for i in range(6))
  assert a['messages'] == [{'role': 'user', 'content': '<image>\nWhat is it?'}]  # placeholder added
  assert (a['chosen'], a['rejected']) == ('A cat.', 'A dog.') and 'ref_logps' not in a
  assert [m['role'] for m in b['messages']] == ['user', 'assistant', 'user']
  assert b['messages'][2]['content'] == '<image>\nAnd this?' and b['ref_logps'] == [-1.5, -2.0]
  assert c['messages'] == [{'role': 'user', 'content': 'Q?'}] and c['images'] == []
  assert d['error'] == ('bad_record', 'a pair needs "chosen" and "rejected"')
  assert e['error'][1] == 'the prompt of a pair must end with a user turn'
  assert 'must both be finite numbers' in f['error'][1]


def test_image_is_decoded_once_and_both_answers_share_the_prompt(tmp_path, make_image,
                                                                 tokenizer_dir, monkeypatch):
  path = _write(tmp_path, [{'id': 'a', 'image': '0.png', 'prompt': 'What is in the picture?',
                            'chosen': 'A red square.', 'rejected': 'A cat sits on the mat.',
                            'ref_chosen_logps': -1.0, 'ref_rejected_logps': -9.0}], make_image)
  cfg = _config(tokenizer_dir, path, max_length=128)
  from mmjax.data.tokenizer import Tokenizer

  processor = pairs.PairProcessor(cfg, Tokenizer.load(tokenizer_dir), reference_columns=True)
  decoded = []
  real_load = sample.load_image
  monkeypatch.setattr(pairs, 'load_image', lambda *a: decoded.append(a) or real_load(*a))
  example = processor(open_source(str(path), pairs=True)[0])
  assert len(decoded) == 1
  assert example['pixel_values'].shape[0] == 1 and 'rejected_pixel_values' not in example
  chosen, rejected = example['input_ids'], example['rejected_input_ids']
  prompt = np.flatnonzero(example['loss_mask'])[0] + 1  # the first answer token
  np.testing.assert_array_equal(chosen[:prompt], rejected[:prompt])
  assert np.flatnonzero(example['rejected_loss_mask'])[0] + 1 == prompt
  assert len(rejected) > len(chosen)
  np.testing.assert_array_equal(example['ref_logps'], [[-1.0, -9.0]])


@pytest.mark.parametrize('packing', [True, False])
def test_pairs_stay_together_when_packed_with_their_reference_columns(
    tmp_path, make_image, tokenizer_dir, packing):
  records = [{'id': f'p{i}', 'image': f'{i}.png', 'prompt': 'What is in the picture?',
              'chosen': 'A red square.' * (1 + i % 2), 'rejected': 'A cat.' * (1 + i % 3),
              'ref_chosen_logps': -float(i), 'ref_rejected_logps': -10.0 - i} for i in range(6)]
  path = _write(tmp_path, records, make_image)
  cfg = _config(tokenizer_dir, path, max_length=256, packing=packing, reference_columns=True,
                num_epochs=1)
  from mmjax.data.tokenizer import Tokenizer

  processor = pairs.PairProcessor(cfg, Tokenizer.load(tokenizer_dir))
  source = open_source(str(path), pairs=True)
  answer_targets = [(processor(source[i])['loss_mask'].sum(),
                     processor(source[i])['rejected_loss_mask'].sum()) for i in range(6)]
  assert len(set(answer_targets)) == 6  # each pair's answer lengths tell it apart
  batch = next(make_iterator(cfg))
  b, t = 2, 256
  for key in pairs.ANSWER_KEYS[:-1]:  # (no M-RoPE here)
    assert batch[key].shape == (b, 2, t), key
  assert batch['pixel_values'].shape[0] == b * 4 and batch['ref_chosen_logps'].shape == (b, t)
  seen = set()
  for row in range(b):
    segments = batch['segment_ids'][row]  # [2, T]
    n = segments[0].max()
    assert n == segments[1].max() and (n > 1) == packing
    assert batch['image_mask'][row * 4:(row + 1) * 4].sum() == n  # one image per pair, once
    for k in range(1, n + 1):
      # The pair of segment k: its reference columns sit in slot k - 1 of both rows' arrays.
      i = int(-batch['ref_chosen_logps'][row, k - 1])
      assert batch['ref_rejected_logps'][row, k - 1] == -10.0 - i
      # ... and its chosen and rejected answers are segment k of the two rows.
      lengths = tuple(batch['loss_mask'][row, a][segments[a] == k].sum() for a in range(2))
      assert lengths == answer_targets[i]
      seen.add(i)
    assert not batch['ref_chosen_logps'][row, n:].any()
  assert len(seen) == sum(int(batch['segment_ids'][r, 0].max()) for r in range(b))

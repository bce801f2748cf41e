"""The grain pipeline: schema, packing, determinism, resumable state, host sharding, mixtures, jax.Arrays."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from mmjax.data import packing
from mmjax.data.pipeline import DataConfig, DataIterator, SourceConfig, build_dataset, to_global
from mmjax.data.preprocess import preset
from mmjax.data.sources import JsonSource
from mmjax.data.validation import REASONS, TooManySkips


def _cfg(path, root, **kw):
  base = dict(image=preset('llava15', shortest_edge=28, crop_size=28), max_length=256, batch_size=2,
              max_tiles=3, max_images=3, sources=(SourceConfig(path, root),), seed=3,
              read_threads=1, read_buffer=4)
  return DataConfig(**{**base, **kw})


def _take(cfg, tokenizer, n, **kw):
  it = DataIterator(build_dataset(cfg, tokenizer, process_index=kw.get('index', 0),
                                  process_count=kw.get('count', 1)))
  batches = [next(it) for _ in range(n)]
  return batches, it


def test_batch_schema_and_packing(llava_dataset, tokenizer):
  path, root = llava_dataset
  cfg = _cfg(path, root)
  (batch,), it = _take(cfg, tokenizer, 1)
  B, T, S, M = 2, 256, 3, 3
  expect = {'input_ids': ((B, T), np.int32), 'labels': ((B, T), np.int32), 'loss_mask': ((B, T), np.float32),
            'attention_mask': ((B, T), np.int32), 'segment_ids': ((B, T), np.int32),
            'positions': ((B, T), np.int32), 'pixel_values': ((B * S, 28, 28, 3), np.float32),
            'image_mask': ((B * S,), np.bool_), 'image_sizes': ((B * M, 2), np.int32),
            'image_tiles': ((B * M,), np.int32), 'image_segment_ids': ((B * M,), np.int32),
            'num_images': ((B,), np.int32)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expect
  image_id = tokenizer.token_to_id('<image>')
  for b in range(B):
    seg = batch['segment_ids'][b]
    assert seg.max() >= 2  # ~90-token samples: several per 256-token row
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      assert np.all(np.diff(where) == 1)  # contiguous
      np.testing.assert_array_equal(batch['positions'][b, where], np.arange(len(where)))
      assert batch['loss_mask'][b, where[-1]] == 0  # never predict across a sample boundary
    np.testing.assert_array_equal(batch['attention_mask'][b], seg > 0)
    # Image tokens of a row match its tiles: 4 tokens per 28-px tile.
    row_tiles = batch['image_mask'][b * S:(b + 1) * S].sum()
    assert (batch['input_ids'][b] == image_id).sum() == 4 * row_tiles == 4 * batch['num_images'][b]
  pad = packing.padding_fraction(batch)
  assert 0 < pad < 0.5 and it.stats()['padding_fraction'] == pytest.approx(pad)


def test_no_packing_one_sample_per_row(llava_dataset, tokenizer):
  path, root = llava_dataset
  (batch,), _ = _take(_cfg(path, root, packing=False), tokenizer, 1)
  assert batch['segment_ids'].max(axis=1).tolist() == [1, 1]


def test_deterministic_and_seeded(llava_dataset, tokenizer):
  path, root = llava_dataset
  a, _ = _take(_cfg(path, root), tokenizer, 4)
  b, _ = _take(_cfg(path, root), tokenizer, 4)
  c, _ = _take(_cfg(path, root, seed=4), tokenizer, 4)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x['input_ids'], y['input_ids']) for x, y in zip(a, c))


def test_state_resumes_exactly(llava_dataset, tokenizer):
  path, root = llava_dataset
  cfg = _cfg(path, root)
  reference, _ = _take(cfg, tokenizer, 5)
  _, it = _take(cfg, tokenizer, 2)
  state = json.loads(json.dumps(it.get_state()))  # JSON-able, as a checkpoint stores it
  resumed = DataIterator(build_dataset(cfg, tokenizer, process_index=0, process_count=1))
  resumed.set_state(state)
  for expected in reference[2:]:
    got = next(resumed)
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k])
  assert resumed.stats()['samples'] > it.stats()['samples']


def test_hosts_see_disjoint_samples(tmp_path, tokenizer, make_record):
  answers = [f'answer number {i}' for i in range(6)]
  records = [make_record(i, answer=a) for i, a in enumerate(answers)]
  (tmp_path / 'd.json').write_text(json.dumps(records))
  cfg = _cfg(str(tmp_path / 'd.json'), None, batch_size=2, num_epochs=1, packing=False, drop_remainder=False)
  seen = []
  for index in range(2):
    batches, _ = _take(cfg, tokenizer, 3, index=index, count=2)  # 3 samples per host, 1 row each
    texts = [tokenizer.decode(b['labels'][r][b['loss_mask'][r] > 0]) for b in batches for r in range(len(b['labels']))]
    seen.append({t for t in texts})
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 6


def test_bad_samples_are_skipped_and_counted(llava_dataset, tokenizer, tmp_path):
  path, root = llava_dataset
  records = json.loads(open(path).read())
  records[0]['image'] = 'missing.png'
  records[1]['conversations'] = []
  records[2]['conversations'][0]['value'] = 'no placeholder'
  (tmp_path / 'data.json').write_text(json.dumps(records))
  cfg = _cfg(path, root, num_epochs=1, packing=False, drop_remainder=False, shuffle=False)
  it = DataIterator(build_dataset(cfg, tokenizer, process_index=0, process_count=1))
  rows = sum(len(b['input_ids']) for b in it)
  assert rows == 5
  assert it.stats()['skipped'] == {'missing_image': 1, 'empty_conversation': 1, 'image_count_mismatch': 1}


def test_all_bad_is_an_error_not_a_hang(llava_dataset, tokenizer):
  path, root = llava_dataset
  it = DataIterator(build_dataset(_cfg(path, root, max_length=8, max_consecutive_skips=50), tokenizer,
                                  process_index=0, process_count=1))
  with pytest.raises(TooManySkips, match='50 samples in a row were skipped'):
    next(it)


def test_weighted_mixture(tmp_path, tokenizer, make_record):
  for name, answer in (('a', 'from a'), ('b', 'from b')):
    (tmp_path / f'{name}.json').write_text(json.dumps([make_record(i, answer=answer) for i in range(5)]))
  sources = (SourceConfig(str(tmp_path / 'a.json'), weight=3.0), SourceConfig(str(tmp_path / 'b.json'), weight=1.0))
  cfg = _cfg('', None, sources=sources, packing=False, batch_size=4)
  batches, _ = _take(cfg, tokenizer, 10)
  texts = [tokenizer.decode(b['labels'][r][b['loss_mask'][r] > 0]) for b in batches for r in range(4)]
  share_a = sum('from a' in t for t in texts) / len(texts)
  assert share_a == pytest.approx(0.75, abs=0.05)


def test_worker_process_gives_the_same_batches(llava_dataset, tokenizer):
  path, root = llava_dataset
  cfg = _cfg(path, root)
  reference, _ = _take(cfg, tokenizer, 3)
  it = DataIterator(build_dataset(dataclasses.replace(cfg, num_workers=1), tokenizer,
                                  process_index=0, process_count=1))
  try:
    for expected in reference:
      got = next(it)
      for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
  finally:
    it.close()


def test_global_arrays_on_a_mesh(llava_dataset, tokenizer):
  path, root = llava_dataset
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ('data',))
  cfg = _cfg(path, root, batch_size=n)
  batch = next(DataIterator(build_dataset(cfg, tokenizer, process_index=0, process_count=1), mesh=mesh))
  assert isinstance(batch['input_ids'], jax.Array) and batch['input_ids'].shape == (n, 256)
  assert batch['pixel_values'].shape == (n * 3, 28, 28, 3)
  assert batch['input_ids'].sharding.spec == jax.sharding.PartitionSpec('data')
  assert len(batch['input_ids'].addressable_shards) == n


def test_skip_counts_vector_matches_reasons():
  row = {'input_ids': np.zeros(4, np.int32), 'labels': np.zeros(4, np.int32), 'loss_mask': np.zeros(4),
         'input_ids_segment_ids': np.array([1, 1, 0, 0]), 'input_ids_positions': np.array([0, 1, 0, 0]),
         'pixel_values': np.zeros((1, 2, 2, 3)), 'pixel_values_segment_ids': np.array([0]),
         'image_sizes': np.zeros((1, 2)), 'image_tiles': np.zeros(1), 'image_tiles_segment_ids': np.array([0]),
         packing.SKIP_COUNTS: [np.eye(len(REASONS), dtype=np.int64)[2]] * 2}
  out = packing.finalize_row(row)
  assert out[packing.SKIP_COUNTS][2] == 2 and out['num_images'] == 0


def test_qwen2_vl_patches_and_mrope_through_packing(llava_dataset, tokenizer):
  path, root = llava_dataset
  image = preset('qwen2_vl', min_pixels=28 * 28, max_pixels=56 * 56)
  cfg = _cfg(path, root, image=image, template='chatml', image_token='<|image_pad|>',
             image_start='<|vision_start|>', image_end='<|vision_end|>', mrope=True, max_tiles=24)
  (batch,), _ = _take(cfg, tokenizer, 1)
  assert batch['pixel_values'].shape == (2 * 24, 3 * 2 * 14 * 14)
  assert batch['mrope_positions'].shape == (2, 256, 3) and batch['image_grid_thw'].shape == (2 * 3, 3)
  grids = batch['image_grid_thw'][batch['image_segment_ids'] > 0]
  assert batch['image_mask'].sum() == (grids[:, 1] * grids[:, 2]).sum()  # every real patch slot
  pad_id = tokenizer.token_to_id('<|image_pad|>')
  assert (batch['input_ids'] == pad_id).sum() == (grids[:, 1] * grids[:, 2]).sum() // 4


def test_llava_next_tiles_through_packing(llava_dataset, tokenizer):
  path, root = llava_dataset
  image = preset('llava_next', shortest_edge=28, crop_size=28, grid_pinpoints=((28, 56), (56, 28), (56, 56)))
  (batch,), _ = _take(_cfg(path, root, image=image, max_tiles=10, max_length=512), tokenizer, 1)
  tiles = batch['image_tiles'][batch['image_segment_ids'] > 0]
  assert batch['image_mask'].sum() == tiles.sum() and np.all(tiles >= 3)  # base view + >= 2 grid tiles

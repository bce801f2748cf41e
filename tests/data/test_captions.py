"""Image-caption pairs from the pipeline's sources (contrastive objectives)."""

import json

import numpy as np

from mmjax.data import preprocess
from mmjax.data.pipeline import DataConfig, make_iterator
from mmjax.data.sample import load_image


def _config(tokenizer_dir, path, **kw):
  return DataConfig.from_dict(dict(
      image_preset='clip224', image_overrides=dict(shortest_edge=32, crop_size=32, patch_size=16),
      tokenizer=tokenizer_dir, batch_size=2, max_length=12, shuffle=False,
      sources=[dict(path=str(path))], captions=True, **kw))


def test_pairs_are_the_image_and_its_last_answer_padded_and_bad_records_skipped(
    tmp_path, make_image, make_record, tokenizer):
  captions = ['A red square.', 'The cat sits on the mat next to a dog. ' * 3, 'A blue background.',
              'A dog.']
  records = [make_record(i, image=f'{i}.png', answer=c) for i, c in enumerate(captions)]
  records.insert(1, make_record(9, answer='no image'))  # text-only: skipped
  records.insert(3, {'id': 'two', 'images': ['0.png', '1.png'], 'conversations': [
      {'from': 'human', 'value': '<image><image>'}, {'from': 'gpt', 'value': 'Two.'}]})
  for i in range(len(captions)):
    make_image(tmp_path / f'{i}.png', 24 + 4 * i, 40, seed=i)
  path = tmp_path / 'captions.json'
  path.write_text(json.dumps([{**r, 'image': str(tmp_path / r['image'])} if 'image' in r else r
                              for r in records]))
  cfg = _config(tokenizer.source, path)
  it = make_iterator(cfg, tokenizer)
  batches = [next(it), next(it)]
  images = preprocess.ImageProcessor(cfg.image)
  for b, batch in enumerate(batches):
    assert sorted(batch) == ['pixels', 'text_ids', 'text_mask']
    assert batch['pixels'].shape == (2, 32, 32, 3) and batch['text_ids'].shape == (2, 12)
    for r in range(2):
      i = 2 * b + r
      expected = images.sample_tiles(images(load_image(str(tmp_path / f'{i}.png'), 'x')))[0]
      np.testing.assert_array_equal(batch['pixels'][r], expected)
      ids, _ = tokenizer.encode(captions[i].strip(), add_special_tokens=True)
      n = int(batch['text_mask'][r].sum())
      if len(ids) > 12:  # cut to max_length, the last token kept
        ids = np.concatenate([ids[:11], ids[-1:]])
      np.testing.assert_array_equal(batch['text_ids'][r, :n], ids)
      assert n == len(ids) and (batch['text_ids'][r, n:] == 0).all()
      assert (batch['text_mask'][r, :n] == 1).all()
  assert it.stats()['skipped'] == {'image_count_mismatch': 2}  # no image; two images
  assert it.stats()['samples'] == 4

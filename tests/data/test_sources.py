"""Sources: LLaVA JSON/JSONL, OpenAI messages, ArrayRecord shards (+ `data pack`), TFDS, mixtures."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmjax.data import cli
from mmjax.data.sources import (ArrayRecordSource, JsonSource, TfdsSource, decode_record, encode_record,
                                normalize_record, open_source)


def test_llava_json_and_jsonl(tmp_path, make_record):
  records = [make_record(0, image='a.png'), make_record(1, turns=2)]
  records[1]['conversations'].insert(0, {'from': 'system', 'value': 'Be nice.'})
  (tmp_path / 'd.json').write_text(json.dumps(records))
  (tmp_path / 'd.jsonl').write_text('\n'.join(json.dumps(r) for r in records) + '\n\n')
  for name in ('d.json', 'd.jsonl'):
    src = JsonSource(str(tmp_path / name), image_root='/root')
    assert len(src) == 2
    first, second = src[0], src[1]
    assert first['id'] == 's0' and first['images'] == ['/root/a.png']
    assert [m['role'] for m in first['messages']] == ['user', 'assistant']
    assert first['messages'][0]['content'].startswith('<image>\n')
    assert [m['role'] for m in second['messages']] == ['system', 'user', 'assistant', 'user', 'assistant']
    assert second['images'] == []


def test_openai_messages_with_image_parts():
  record = {'id': 'm1', 'messages': [
      {'role': 'user', 'content': [{'type': 'image', 'image': 'x/1.jpg'}, {'type': 'text', 'text': 'Describe.'}]},
      {'role': 'assistant', 'content': 'A dog.'}]}
  raw = normalize_record(record, 0, image_root='/data')
  assert raw['messages'][0] == {'role': 'user', 'content': '<image>Describe.'}
  assert raw['images'] == ['/data/x/1.jpg']
  string_content = {'messages': [{'role': 'user', 'content': '<image> hi'}, {'role': 'assistant', 'content': 'yo'}],
                    'images': ['/abs/i.png']}
  assert normalize_record(string_content, 3)['images'] == ['/abs/i.png']
  assert normalize_record(string_content, 3)['id'] == '#3'


@pytest.mark.parametrize('record,detail', [
    ([1, 2], 'not an object'), ({'id': 'q'}, 'neither'), ({'id': 'q', 'conversations': [{'from': 'alien'}]}, 'speaker'),
    ({'id': 'q', 'messages': [{'role': 'user', 'content': [{'type': 'video'}]}]}, 'part type'),
])
def test_malformed_records_become_bad_record(record, detail):
  raw = normalize_record(record, 0)
  assert raw['error'][0] == 'bad_record' and detail in raw['error'][1]


def test_invalid_jsonl_line_is_a_bad_record(tmp_path):
  (tmp_path / 'd.jsonl').write_text('{"id": "a", "conversations": []}\n{not json\n')
  src = JsonSource(str(tmp_path / 'd.jsonl'))
  assert src[1]['error'][0] == 'bad_record' and 'd.jsonl:2' in src[1]['id']


def test_record_roundtrip():
  raw = decode_record(encode_record('z', [{'role': 'user', 'content': 'ü'}], [b'abc', b'', b'defg']))
  assert raw == {'id': 'z', 'messages': [{'role': 'user', 'content': 'ü'}], 'images': [b'abc', b'', b'defg']}


def test_pack_to_array_record_and_read_back(llava_dataset, tmp_path):
  path, root = llava_dataset
  # Break one image and drop another to see them skipped and counted.
  records = json.loads(open(path).read())
  records[0]['image'] = 'missing.png'
  (tmp_path / 'images' / 'bad.png').write_bytes(b'garbage')
  records[1]['image'] = 'bad.png'
  (tmp_path / 'data.json').write_text(json.dumps(records))
  out = tmp_path / 'shards'
  parser = _parser()
  args = parser.parse_args(['pack', path, '--image-root', root, '--output', str(out), '--num-shards', '3'])
  assert args.func(args) == 0
  src = open_source(str(out))
  assert isinstance(src, ArrayRecordSource) and len(src.paths) == 3 and len(src) == 6
  ids = sorted(src[i]['id'] for i in range(len(src)))
  assert ids == ['s2', 's3', 's4', 's5', 's6', 's7']
  by_id = {src[i]['id']: src[i] for i in range(len(src))}
  assert by_id['s2']['images'] == [open(f'{root}/2.png', 'rb').read()]
  assert by_id['s3']['images'] == []
  result = cli.pack_dataset(path, str(tmp_path / 'again'), root, num_shards=2)
  assert result['skipped'] == {'missing_image': 1, 'corrupt_image': 1} and result['usable'] == 6


def _parser():
  import argparse
  parser = argparse.ArgumentParser()
  cli.add_subcommands(parser.add_subparsers(dest='data_command', required=True))
  return parser


class MmjaxTinyCaptions(tfds.core.GeneratorBasedBuilder):
  """A 5-example TFDS dataset built in-process (ArrayRecord format needs no TensorFlow)."""
  VERSION = tfds.core.Version('1.0.0')
  code_path = None  # Defined in a test module: no checksums file to look up next to it.

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding='bytes'),
        'caption': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(5):
      yield i, {'image': rng.integers(0, 256, (8 + i, 10, 3), dtype=np.uint8), 'caption': f'caption {i}'}


def test_tfds_source(tmp_path):
  MmjaxTinyCaptions(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  src = TfdsSource('mmjax_tiny_captions', split='train', data_dir=str(tmp_path))
  assert len(src) == 5
  raw = src[0]
  assert raw['messages'][0] == {'role': 'user', 'content': '<image>'}
  assert raw['messages'][1]['content'].startswith('caption ')
  assert raw['images'][0].dtype == np.uint8 and raw['images'][0].shape[1:] == (10, 3)
  qa = TfdsSource('mmjax_tiny_captions', data_dir=str(tmp_path), fields={'image': 'image', 'question': 'caption',
                                                                         'answer': 'caption'})
  assert qa[1]['messages'][0]['content'].startswith('<image>\ncaption')
  broken = TfdsSource('mmjax_tiny_captions', data_dir=str(tmp_path), fields={'image': 'pixels', 'caption': 'caption'})
  assert broken[0]['error'][0] == 'bad_record'


def test_json_array_with_a_utf8_bom_is_read_as_json(tmp_path, make_record):
  records = [make_record(i) for i in range(3)]
  for name, text in (('d.json', json.dumps(records, indent=1)),
                     ('d.jsonl', '\n'.join(json.dumps(r) for r in records))):
    (tmp_path / name).write_bytes(b'\xef\xbb\xbf' + text.encode())
    src = JsonSource(str(tmp_path / name))
    assert len(src) == 3 and all('error' not in src[i] for i in range(3)), name


@pytest.mark.parametrize('ref', ['../secret.png', '/etc/passwd', 'a/../../b.png',
                                 'file:///etc/hosts'])
def test_image_paths_outside_the_root_are_refused(tmp_path, ref):
  record = {'id': 'x', 'image': ref, 'conversations': []}
  raw = normalize_record(record, 0, image_root=str(tmp_path))
  assert raw['error'][0] == 'image_outside_root' and ref.replace('file://', '') in raw['error'][1]


def test_image_paths_inside_the_root_resolve(tmp_path):
  root = str(tmp_path)
  for ref, want in (('a.png', 'a.png'), ('x/../b.png', 'b.png'), (f'{root}/c/d.png', 'c/d.png')):
    raw = normalize_record({'id': 'x', 'image': ref, 'conversations': []}, 0, image_root=root)
    assert raw['images'] == [f'{root}/{want}']


def test_json_images_default_to_the_files_directory(tmp_path, make_record):
  (tmp_path / 'd.json').write_text(json.dumps([make_record(0, image='a.png'),
                                               make_record(1, image='../a.png')]))
  src = JsonSource(str(tmp_path / 'd.json'))
  assert src[0]['images'] == [str(tmp_path / 'a.png')]
  assert src[1]['error'][0] == 'image_outside_root'


@pytest.mark.parametrize('field', [123, [None], [123], {'path': 'a.png'}, [''], [['a.png']]])
def test_malformed_image_fields_are_bad_records(field):
  raw = normalize_record({'id': 'x', 'image': field, 'conversations': []}, 0, image_root='/data')
  assert raw['error'][0] == 'bad_record' and 'image' in raw['error'][1]


def test_pack_never_embeds_files_outside_the_image_root(llava_dataset, tmp_path):
  path, root = llava_dataset
  records = json.loads(open(path).read())
  secret = tmp_path / 'secret.png'
  secret.write_bytes(open(f'{root}/0.png', 'rb').read())  # a real image: only the path is wrong
  records[0]['image'] = '../secret.png'
  records[1]['image'] = str(secret)
  (tmp_path / 'data.json').write_text(json.dumps(records))
  result = cli.pack_dataset(path, str(tmp_path / 'shards'), root, num_shards=1, verify=False)
  assert result['skipped'] == {'image_outside_root': 2} and result['usable'] == 6
  packed = open(result['shards'][0], 'rb').read()
  assert secret.read_bytes()[-64:] not in packed

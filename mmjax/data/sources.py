"""Data sources: random-access collections of raw samples, all in one normalized form.

A *raw sample* is a dict::

  {'id': str,
   'messages': [{'role': 'system' | 'user' | 'assistant', 'content': str}, ...],  # '<image>' marks images
   'images': [ref, ...]}   # ref: encoded image bytes, a file path, or a uint8 HWC array

or an interleaved image-text document, ``{'id', 'text': str, 'images'}`` with an ``<image>``
marker per image in ``text`` (``mmjax.data.documents``).

Sources are grain ``RandomAccessDataSource``s (``__len__`` + ``__getitem__``), so they plug into
``grain.MapDataset.source``. Normalizing a record never raises: a malformed record becomes a raw
sample with an ``'error'`` key (reason, detail) that the pipeline counts and skips.

* ``JsonSource``: LLaVA JSON / JSONL (``id``, ``image`` | ``images``, ``conversations`` with
  ``from``/``value``) or OpenAI-style ``messages`` (``content`` a string or a list of
  ``{'type': 'text'|'image'|'image_url', ...}`` parts), or interleaved documents (``text`` with
  ``<image>`` markers, or OBELICS' ``texts`` / ``images`` lists), paths relative to ``image_root``
  (default: the file's directory) and refused outside it.
* ``ArrayRecordSource``: shards written by ``mmjax data pack`` (images embedded, format below).
* ``TfdsSource``: a TFDS dataset through ``tfds.data_source`` (ArrayRecord-backed, no TensorFlow).

ArrayRecord record format (one record per sample)::

  uint32 little-endian header length | header JSON (utf-8) | image bytes, concatenated
  header = {"id": ..., "messages": [...], "image_lengths": [n_bytes, ...]}  (documents: "text")

(A custom framing rather than tf.train.Example because it needs no TensorFlow/protobuf and a record
decodes with one ``json.loads`` and slicing.)
"""

from __future__ import annotations

import codecs
import glob
import json
import os
import struct
from typing import Any, Callable, Sequence

import numpy as np

from mmjax.data import documents, image_refs
from mmjax.data.validation import SampleError

IMAGE = '<image>'
_ROLES = {'human': 'user', 'user': 'user', 'gpt': 'assistant', 'assistant': 'assistant', 'model': 'assistant',
          'bot': 'assistant', 'system': 'system'}


def _bad(sample_id: str, reason: str, detail: str) -> dict:
  return {'id': sample_id, 'messages': [], 'images': [], 'error': (reason, detail)}


def normalize_record(record: Any, index: int, image_root: str | None = None) -> dict:
  """LLaVA or OpenAI-style record, or an interleaved document -> raw sample (or a raw sample
  with an 'error')."""
  if not isinstance(record, dict):
    return _bad(f'#{index}', 'bad_record', f'record is a {type(record).__name__}, not an object')
  sample_id = str(record.get('id', f'#{index}'))
  messages = []
  try:
    if 'conversations' not in record and 'messages' not in record:
      document = documents.document_of(record, sample_id, image_root)
      if document is None:
        return _bad(sample_id, 'bad_record', 'record has neither "conversations", "messages" nor '
                    'an interleaved document\'s "text" / "texts"')
      return document
    images = image_refs.refs_of(record.get('images', record.get('image')), sample_id)
    if 'conversations' in record:
      for turn in record['conversations']:
        role = _ROLES.get(str(turn.get('from', '')).lower())
        if role is None:
          return _bad(sample_id, 'bad_record', f'unknown speaker {turn.get("from")!r}')
        messages.append({'role': role, 'content': str(turn.get('value', ''))})
    else:  # messages
      inline = []
      for turn in record['messages']:
        role = _ROLES.get(str(turn.get('role', '')).lower())
        if role is None:
          return _bad(sample_id, 'bad_record', f'unknown role {turn.get("role")!r}')
        content = turn.get('content', '')
        if isinstance(content, list):
          parts = []
          for part in content:
            kind = part.get('type')
            if kind == 'text':
              parts.append(str(part.get('text', '')))
            elif kind in ('image', 'image_url'):
              parts.append(IMAGE)
              ref = part.get('image', part.get('image_url', part.get('path')))
              if isinstance(ref, dict):
                ref = ref.get('url')
              inline.extend(image_refs.refs_of(ref, sample_id))
            else:
              return _bad(sample_id, 'bad_record', f'unknown content part type {kind!r}')
          content = ''.join(parts)
        messages.append({'role': role, 'content': str(content)})
      images = images + inline
    resolved = [image_refs.resolve(ref, image_root, sample_id) for ref in images]
    videos = record.get('videos', record.get('video'))  # '<video>' placeholders (Qwen-VL)
    if videos is not None:  # the same kinds of reference, under the same root, as images
      videos = [image_refs.resolve(v, image_root, sample_id)
                for v in image_refs.refs_of(videos, sample_id)]
  except (AttributeError, TypeError) as e:
    return _bad(sample_id, 'bad_record', f'malformed conversation: {e}')
  except SampleError as e:
    return _bad(sample_id, e.reason, e.detail)
  sample = {'id': sample_id, 'messages': messages, 'images': resolved}
  if videos is not None:
    sample['videos'] = videos
  return sample


class JsonSource:
  """LLaVA / OpenAI-style JSON (a list) or JSONL file. Records are kept as compact JSON bytes.

  Image paths are relative to ``image_root``, by default the file's own directory, and may not
  lead outside it (``image_refs.resolve``). A UTF-8 byte order mark at the start is skipped.
  """

  def __init__(self, path: str, image_root: str | None = None, normalize=normalize_record):
    self.path, self.normalize = path, normalize  # normalize(record, index, image_root)
    if image_root is None:
      image_root = os.path.dirname(os.path.abspath(path))
    self.image_root = image_root
    with open(path, 'rb') as f:
      start = len(codecs.BOM_UTF8) if f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
      f.seek(start)
      head = f.read(4096).lstrip()
      f.seek(start)
      if head.startswith(b'['):
        try:
          records = json.load(f)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}: invalid JSON: {e}') from e
        # Re-serialize each record: a list of bytes is far smaller than Python dicts and pickles
        # fast to grain worker processes.
        self._records = [json.dumps(r, ensure_ascii=False).encode() for r in records]
      else:
        self._records = [line for line in (l.strip() for l in f) if line]

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    try:
      record = json.loads(self._records[index])
    except json.JSONDecodeError as e:
      return _bad(f'{os.path.basename(self.path)}:{index + 1}', 'bad_record', f'invalid JSON line: {e}')
    return self.normalize(record, index, self.image_root)

  def __repr__(self):
    return f'JsonSource({self.path!r}, image_root={self.image_root!r}, n={len(self)})'


def encode_record(sample_id: str, messages: list[dict], images: Sequence[bytes],
                  text: str | None = None) -> bytes:
  """Serializes one sample for an ArrayRecord shard (format in the module docstring); `text`:
  an interleaved document's (then `messages` is unused)."""
  fields = {'id': sample_id, 'messages': messages} if text is None else {'id': sample_id, 'text': text}
  header = json.dumps({**fields, 'image_lengths': [len(b) for b in images]},
                      ensure_ascii=False).encode()
  return b''.join([struct.pack('<I', len(header)), header, *images])


def decode_record(data: bytes) -> dict:
  """Inverse of ``encode_record``: a raw sample whose images are bytes."""
  (n,) = struct.unpack_from('<I', data, 0)
  header = json.loads(data[4:4 + n])
  images, offset = [], 4 + n
  for length in header.pop('image_lengths'):
    images.append(bytes(data[offset:offset + length]))
    offset += length
  if 'text' in header:  # an interleaved document
    return {'id': header['id'], 'text': header['text'], 'images': images}
  return {'id': header['id'], 'messages': header['messages'], 'images': images}


def shard_paths(pattern: str | Sequence[str]) -> list[str]:
  """Expands a glob, a directory (all *.array_record in it), or a list of paths."""
  if not isinstance(pattern, str):
    return [p for item in pattern for p in shard_paths(item)]
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, '*.array_record')
  paths = sorted(glob.glob(pattern)) if any(c in pattern for c in '*?[') else [pattern]
  if not paths:
    raise FileNotFoundError(f'no ArrayRecord shards match {pattern!r}')
  return paths


class ArrayRecordSource:
  """Shards written by ``mmjax data pack``; random access through grain's ArrayRecordDataSource."""

  def __init__(self, paths: str | Sequence[str]):
    import grain  # pylint: disable=g-import-not-at-top
    self.paths = shard_paths(paths)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    data = self._source[index]
    try:
      return decode_record(data)
    except (ValueError, KeyError, struct.error) as e:
      return _bad(f'{self.paths[0]}#{index}', 'bad_record', f'undecodable ArrayRecord record: {e}')

  def __repr__(self):
    return f'ArrayRecordSource({len(self.paths)} shards, n={len(self)})'


def _field(example: dict, path: str):
  value = example
  for key in path.split('/'):
    value = value[key]
  if isinstance(value, (list, tuple, np.ndarray)) and not (isinstance(value, np.ndarray) and value.ndim >= 2):
    value = value[0] if len(value) else ''  # Several captions: use the first.
  if isinstance(value, (bytes, np.bytes_)):
    value = bytes(value).decode('utf-8')
  return value


class TfdsSource:
  """A TFDS dataset through ``tfds.data_source`` (needs the ArrayRecord build of the dataset).

  ``fields`` names the features: ``image`` (required) and either ``caption`` (a pre-training pair:
  user "<image>", assistant the caption) or ``question`` + ``answer``. Nested features use '/'
  (``'captions/text'``); a list of texts uses its first element. ``to_sample`` overrides all this
  with a function ``(example, index) -> raw sample``.
  """

  def __init__(self, name: str, split: str = 'train', data_dir: str | None = None,
               fields: dict | None = None, to_sample: Callable[[dict, int], dict] | None = None,
               source: Any = None):
    if source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.name, self.split = name, split
    self._source = source
    self.fields = dict(fields or {'image': 'image', 'caption': 'caption'})
    self.to_sample = to_sample

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    example = self._source[index]
    if self.to_sample is not None:
      return self.to_sample(example, index)
    sample_id = f'{self.name}/{self.split}#{index}'
    try:
      image = _field(example, self.fields['image'])
      if 'caption' in self.fields:
        messages = [{'role': 'user', 'content': IMAGE},
                    {'role': 'assistant', 'content': str(_field(example, self.fields['caption']))}]
      else:
        messages = [{'role': 'user', 'content': f'{IMAGE}\n{_field(example, self.fields["question"])}'},
                    {'role': 'assistant', 'content': str(_field(example, self.fields['answer']))}]
    except (KeyError, IndexError, TypeError) as e:
      return _bad(sample_id, 'bad_record', f'missing TFDS feature {e}')
    return {'id': sample_id, 'messages': messages, 'images': [np.asarray(image)]}

  def __repr__(self):
    return f'TfdsSource({self.name!r}, split={self.split!r}, n={len(self)})'


def open_source(spec: str, image_root: str | None = None, pairs: bool = False) -> Any:
  """A source from a string: ``tfds:NAME[:SPLIT]``, a .json/.jsonl file, Parquet or WebDataset
  tar shards (``mmjax.data.shards``), or ArrayRecord shards. ``pairs``: preference pairs
  (``mmjax.data.pairs``), from .json/.jsonl files."""
  from mmjax.data.shards import open_sharded_source  # pylint: disable=g-import-not-at-top
  if pairs:
    if not spec.endswith(('.json', '.jsonl')):
      raise ValueError(f'{spec}: preference pairs are read from .json / .jsonl files')
    from mmjax.data.pairs import normalize_pair_record  # pylint: disable=g-import-not-at-top
    return JsonSource(spec, image_root, normalize_pair_record)
  if spec.startswith('tfds:'):
    parts = spec.split(':')
    return TfdsSource(parts[1], split=parts[2] if len(parts) > 2 else 'train')
  sharded = open_sharded_source(spec, image_root)
  if sharded is not None:
    return sharded
  if spec.endswith(('.json', '.jsonl')):
    return JsonSource(spec, image_root)
  return ArrayRecordSource(spec)

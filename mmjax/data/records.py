"""Columns that VLM datasets ship in, turned into the pieces of a raw sample.

Hugging Face `datasets` stores an image column as a struct `{bytes, path}` (bytes may be null
when the file sits beside the shards); img2dataset and WebDataset shards hold raw encoded bytes;
LLaVA-style JSON holds a path. Text comes as LLaVA `conversations` (`from` / `value`), OpenAI
`messages`, or a caption (`caption` / `txt` / `text`) for pre-training pairs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

CAPTION_KEYS = ('caption', 'txt', 'text')


def image_ref(value: Any, root: str | None = None):
  """An image cell -> encoded bytes or a file path (resolved against `root`), or None if empty.

  Accepts bytes, a path string (`file://` allowed), a `{bytes, path}` struct (bytes first), or a
  uint8 array; raises ValueError for anything else.
  """
  if value is None:
    return None
  if isinstance(value, dict):
    data = value.get('bytes')
    if data:
      return bytes(data)
    value = value.get('path')
    if not value:
      return None
  if isinstance(value, (bytes, bytearray, memoryview)):
    return bytes(value)
  if isinstance(value, np.ndarray):
    return value
  if isinstance(value, str):
    if value.startswith('file://'):
      value = value[len('file://'):]
    return os.path.join(root, value) if root and not os.path.isabs(value) else value
  raise ValueError(f'an image is given as {type(value).__name__}; expected bytes, a path or a '
                   '{"bytes", "path"} struct')


def image_refs(value: Any, root: str | None = None) -> list:
  """An `image` / `images` cell (one image or a list of them) -> a list of references."""
  if value is None:
    return []
  items = list(value) if isinstance(value, (list, tuple)) else [value]
  return [r for r in (image_ref(v, root) for v in items) if r is not None]


def jsonish(value: Any) -> Any:
  """A column that may hold JSON text (`conversations` stored as a string) -> its value."""
  if isinstance(value, (bytes, bytearray)):
    value = value.decode('utf-8')
  if isinstance(value, str) and value.lstrip()[:1] in ('[', '{'):
    return json.loads(value)
  return value


def caption_of(record: dict) -> str | None:
  """The first caption column present (`caption`, `txt`, `text`), decoded, else None."""
  for key in CAPTION_KEYS:
    value = record.get(key)
    if isinstance(value, (list, tuple)):  # several captions: the first
      value = value[0] if value else None
    if isinstance(value, (bytes, bytearray)):
      value = value.decode('utf-8')
    if isinstance(value, str):
      return value
  return None


def to_raw_sample(record: dict, sample_id: str, image_root: str | None = None) -> dict:
  """A row of a Parquet shard / a WebDataset sample's fields -> a raw sample (see `sources`).

  `conversations` or `messages` (a list, or JSON text) make a conversation with the row's
  `image` / `images`; a `text` with `<image>` markers, or OBELICS' `texts` list (its `images`
  aligned, nulls where text stands), is an interleaved document (`mmjax.data.documents`);
  otherwise a caption (`caption`, `txt`, `text`) makes a pre-training pair (user: the image,
  assistant: the caption). Never raises: a row that fits neither is a raw
  sample with an 'error' (counted and skipped as ``bad_record``).
  """
  from mmjax.data.sources import IMAGE, _bad, normalize_record  # pylint: disable=g-import-not-at-top
  from mmjax.data.validation import SampleError  # pylint: disable=g-import-not-at-top

  try:
    images = image_refs(record.get('images', record.get('image')), image_root)
  except ValueError as e:
    return _bad(sample_id, 'bad_record', str(e))
  for key in ('conversations', 'messages'):
    if record.get(key) is not None:
      try:
        turns = jsonish(record[key])
      except (ValueError, UnicodeDecodeError) as e:
        return _bad(sample_id, 'bad_record', f'{key} is not valid JSON: {e}')
      return normalize_record({'id': sample_id, 'images': images, key: turns}, 0)
  try:
    document = _document(record, sample_id, image_root)
  except (SampleError, ValueError) as e:
    return _bad(sample_id, getattr(e, 'reason', 'bad_record'), getattr(e, 'detail', str(e)))
  if document is not None:
    return document
  caption = caption_of(record)
  if caption is None:
    return _bad(sample_id, 'bad_record', 'no conversations, messages or caption '
                f'({", ".join(CAPTION_KEYS)}) column; columns: {sorted(record)}')
  if len(images) != 1:
    return _bad(sample_id, 'bad_record', f'a caption with {len(images)} images (expected one)')
  return {'id': sample_id, 'images': images,
          'messages': [{'role': 'user', 'content': IMAGE},
                       {'role': 'assistant', 'content': caption}]}


def _document(record: dict, sample_id: str, root: str | None) -> dict | None:
  """An interleaved document's raw sample (`mmjax.data.documents`): a `text` with `<image>`
  markers, or OBELICS' `texts` with its aligned `images` (nulls kept in place); None when the
  row is no document."""
  from mmjax.data.documents import IMAGE, document_of  # pylint: disable=g-import-not-at-top

  texts, text = record.get('texts'), record.get('text')
  if isinstance(text, (bytes, bytearray)):
    text = text.decode('utf-8')
  if isinstance(texts, (list, tuple)):
    column = record.get('images')
    column = list(column) if isinstance(column, (list, tuple, np.ndarray)) else []
    fields = {'texts': list(texts), 'images': [image_ref(v, root) for v in column]}
  elif isinstance(text, str) and IMAGE in text:
    fields = {'text': text, 'images': image_refs(record.get('images', record.get('image')), root)}
  else:
    return None
  return document_of(fields, sample_id, None, lambda ref, _root, _id: ref)

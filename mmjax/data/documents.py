"""Interleaved image-text documents (Flamingo / IDEFICS pre-training: web pages, OBELICS).

A record holds one text with an `<image>` marker where each image stands, and the images in the
order of their markers::

  {"text": "<image>a red circle<|endofchunk|><image>two squares<|endofchunk|>", "images": [a, b]}

(JSON / JSONL, a Parquet row or a WebDataset `json` member; OBELICS' aligned lists
`{"texts": [str | null, ...], "images": [ref | null, ...]}`, one of the two set at each index, are
read as the same). It becomes the raw sample `{'id', 'text', 'images'}` (no `messages`), which
`SampleProcessor` turns into an example of the usual features (`mmjax.data.sample`):

* each marker becomes the family's image text, `data.image_start + data.image_token +
  data.image_end`, expanded to the image's token count; with one wrapper token on both sides
  (IDEFICS' `<fake_token_around_image>`), consecutive images share it as IdeficsProcessor writes
  them: `<fake><image><fake><image><fake>`;
* the tokenizer config's `bos_token` goes first and its `eos_token` last (the tokenizer's own
  post-processor is not used, so a BOS is never doubled); end-of-chunk tokens are text like any
  other;
* the loss covers every text token (end-of-chunk and EOS included); image tokens and their
  wrappers are never targets.

Truncation keeps chunks whole. A chunk is an image with the text that follows it up to the next
image; the text before the first image is the only part that has no image. A document longer than
`data.max_length`, or with more images than `data.max_images`, is cut at the start of the first
image chunk that does not fit (`data.truncate`; else it is skipped as `too_long` /
`too_many_images`), so an image is never kept without the text after it; text before the first
image is cut anywhere. A cut that leaves no target is skipped as `too_long`. Packing then moves
whole samples (`mmjax.data.packing`): a document is never split between rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmjax.data import image_refs
from mmjax.data.validation import SampleError

IMAGE = '<image>'  # the record's marker (`mmjax.data.sources.IMAGE`)
TEXT_KEY = 'text'


def is_document(raw: dict) -> bool:
  """Whether a raw sample is an interleaved document (else a conversation)."""
  return TEXT_KEY in raw and 'messages' not in raw


def document_of(record: dict, sample_id: str, image_root: str | None,
                resolve=image_refs.resolve) -> dict | None:
  """A record's document as a raw sample (a `text` string, or OBELICS' `texts` list), or None
  when it has neither. Raises SampleError('bad_record') for a malformed one."""
  texts = record.get('texts')
  if isinstance(texts, (list, tuple)):  # OBELICS: aligned lists, one entry set at each index
    images = record.get('images')
    if not isinstance(images, (list, tuple)) or len(images) != len(texts):
      raise SampleError('bad_record', sample_id,
                        'OBELICS-style "texts" needs an "images" list of the same length')
    parts, refs = [], []
    for i, (text, image) in enumerate(zip(texts, images)):
      if (text is None) == (image is None):
        raise SampleError('bad_record', sample_id,
                          f'index {i} of "texts" / "images" must hold exactly one of the two')
      if image is not None:
        parts.append(IMAGE)
        refs.append(image)
      elif not isinstance(text, str):
        raise SampleError('bad_record', sample_id, f'texts[{i}] is not a string')
      else:
        parts.append(text)
    text = ''.join(parts)
    refs = image_refs.refs_of(refs, sample_id)
  else:
    text = record.get(TEXT_KEY)
    if not isinstance(text, str):
      return None
    refs = image_refs.refs_of(record.get('images', record.get('image')), sample_id)
  return {'id': sample_id, TEXT_KEY: text,
          'images': [resolve(ref, image_root, sample_id) for ref in refs]}


def check_document(raw: dict) -> None:
  """Structure (no decoding): a text with as many markers as images."""
  sample_id = raw['id']
  text, images = raw[TEXT_KEY], raw['images']
  if not isinstance(text, str) or not isinstance(images, list):
    raise SampleError('bad_record', sample_id, 'a document needs a "text" string and an '
                      '"images" list')
  if not text.replace(IMAGE, '').strip():
    raise SampleError('empty_conversation', sample_id, 'a document without text')
  if text.count(IMAGE) != len(images):
    raise SampleError('image_count_mismatch', sample_id,
                      f'{text.count(IMAGE)} {IMAGE} markers but {len(images)} images')


def document_text(text: str, start: str, token: str, end: str) -> str:
  """The markers replaced by the image text; consecutive images share a wrapper that opens and
  closes alike (IdeficsProcessor's `<fake><image><fake><image><fake>`)."""
  pieces = text.split(IMAGE)
  out = [pieces[0]]
  for k, after in enumerate(pieces[1:]):
    shared = k > 0 and pieces[k] == '' and start and start == end
    out.append(('' if shared else start) + token + end + after)
  return ''.join(out)


def chunk_starts(ids: np.ndarray, first: np.ndarray, counts: list[int], start_id: int | None,
                 end_id: int | None) -> np.ndarray:
  """First token of each image's chunk in the expanded `ids` (`first`: each image's first image
  token): its opening wrapper, unless that token also closes the previous image (then its first
  image token)."""
  starts, previous_end = [], -2  # previous_end: the previous image's closing wrapper
  for pos, count in zip(first, counts):
    shared = start_id is not None and start_id == end_id and pos - 1 == previous_end
    opened = start_id is not None and pos > 0 and ids[pos - 1] == start_id and not shared
    starts.append(pos - 1 if opened else pos)
    previous_end = pos + count if end_id is not None else -2
  return np.asarray(starts, np.int64)


def process_document(proc, raw: dict) -> dict:
  """A document -> an example (features of `mmjax.data.sample`); `proc` is the
  `SampleProcessor` whose tokenizer, image processor and config apply."""
  from mmjax.data.sample import load_image, next_token_targets  # pylint: disable=g-import-not-at-top

  cfg, sample_id = proc.cfg, raw['id']
  check_document(raw)
  text = document_text(raw[TEXT_KEY], cfg.image_start, cfg.image_token, cfg.image_end)
  ids, _ = proc.tokenizer.encode(text, add_special_tokens=False)
  special = [proc.tokenizer.special_token(f'{k}_token') for k in ('bos', 'eos')]
  bos, eos = (proc.tokenizer.token_to_id(t) if t else None for t in special)
  ids = np.concatenate([[bos] if bos is not None else [], ids,
                        [eos] if eos is not None else []]).astype(np.int32)
  image_pos = np.flatnonzero(ids == proc.image_id)
  if len(image_pos) != len(raw['images']):
    raise SampleError('image_count_mismatch', sample_id, f'{len(image_pos)} image tokens after '
                      f'tokenizing but {len(raw["images"])} images')
  pil_images = [load_image(ref, sample_id) for ref in raw['images']]
  counts = [proc.images.num_tokens(im.height, im.width, len(pil_images) > 1) for im in pil_images]
  repeats = np.ones(len(ids), np.int64)
  repeats[image_pos] = counts
  ids = np.repeat(ids, repeats)
  first = image_pos + np.concatenate([[0], np.cumsum(np.asarray(counts) - 1)])[:len(counts)]
  in_run = ids == proc.image_id  # every image token, layout tokens (row breaks) to come included
  proc.lay_out_runs(ids, first.astype(np.int64), pil_images)
  starts = chunk_starts(ids, first.astype(np.int64), counts, *proc.wrap_ids)
  cut, keep = truncate(len(ids), starts, sample_id, cfg)
  ids = ids[:cut]
  layout = in_run[:cut] | np.isin(ids, [i for i in proc.wrap_ids if i is not None])
  targets = next_token_targets(ids, ~layout, sample_id, cfg.max_length)  # text tokens only
  images, processed = proc.image_arrays(sample_id, pil_images[:keep], len(pil_images) > 1)
  return {**proc.text_arrays(ids, targets, processed), **images}


def truncate(length: int, starts: np.ndarray, sample_id: str, cfg: Any) -> tuple[int, int]:
  """Where a document of `length` tokens whose image chunks begin at `starts` is cut to fit
  `cfg.max_length` tokens and `cfg.max_images` images (at the start of the first image chunk
  that does not fit; see the module docstring), and how many images it keeps."""
  cut, keep = length, len(starts)
  if keep > cfg.max_images:
    if not cfg.truncate:
      raise SampleError('too_many_images', sample_id,
                        f'{keep} images > max_images {cfg.max_images} per row')
    keep = cfg.max_images
    cut = int(starts[keep])
  if cut > cfg.max_length:
    if not cfg.truncate:
      raise SampleError('too_long', sample_id, f'{cut} tokens > max_length {cfg.max_length}')
    starts = starts[:keep]
    if not len(starts) or starts[0] >= cfg.max_length:  # within the text before any image
      return cfg.max_length, 0
    keep = int(np.sum(starts <= cfg.max_length)) - 1  # this chunk runs past the cut: dropped
    cut = int(starts[keep])
  return cut, keep

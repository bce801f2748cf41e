"""Preference pairs: one prompt (and its images), a chosen and a rejected answer.

Records (JSON list or JSONL, `data.sources` as for SFT data)::

  {"id": ..., "image": "a.png" | "images": [...],
   "prompt": "<image>\\nWhat is shown?"      (or "question", MMPR's name; or a list of
                                             OpenAI-style messages)
   | "conversations": [{"from": "human", "value": ...}, ...]   (or "messages"),
   "chosen": "A red square.", "rejected": "A blue circle.",
   "ref_chosen_logps": -3.2, "ref_rejected_logps": -7.9}   (optional; train.dpo.reference=
                                                            'precomputed' reads them)

The prompt ends with a user turn; an answer is a string (or one assistant message). A prompt
without an `<image>` placeholder gets one per image before its first user turn. A raw pair is a
raw sample (`mmjax.data.sources`) of the prompt turns with `chosen`, `rejected` (strings) and
`ref_logps` ([chosen, rejected]) added.

An example holds the chosen answer's text features under their usual names and the rejected
one's under `rejected_<name>`, and the images once: the image is decoded and preprocessed once
per pair. Packing keeps a pair together: a packed row pair holds the chosen answers of its pairs
in one row and their rejected answers in the other, segment k being the same pair in both, and
the images of its pairs once. The batch (`finalize_pair_row`, then batched) is the SFT schema
of `mmjax.data.pipeline` except for:

  <ANSWER_KEYS>       [B, 2, T(, 3)]  text arrays, chosen row then rejected row of each pair row
  ref_chosen_logps    [B, T] float32  (with reference columns) slot k: the pair of segment k + 1
  ref_rejected_logps  [B, T] float32
"""

from __future__ import annotations

import numpy as np

from mmjax.data import packing
from mmjax.data.sample import SampleProcessor, load_image, next_token_targets
from mmjax.data.sources import IMAGE, _bad, normalize_record
from mmjax.data.validation import SampleError

# Arrays with an answer axis (chosen, rejected) in a pair batch; the rest are the row's images.
ANSWER_KEYS = ('input_ids', 'labels', 'loss_mask', 'attention_mask', 'segment_ids', 'positions',
               'mrope_positions')
REFERENCE_KEYS = ('ref_chosen_logps', 'ref_rejected_logps')
ANSWERS = ('chosen', 'rejected')
REJECTED = 'rejected_'  # prefix of the rejected answer's example features
REFERENCE_FEATURE = 'ref_logps'  # [1, 2] per example: packed one slot per pair


def _answer(value, sample_id: str, key: str) -> str:
  """An answer given as a string or as one assistant message."""
  if isinstance(value, list) and len(value) == 1:
    value = value[0]
  if isinstance(value, dict):
    value = value.get('content', value.get('value'))
  if not isinstance(value, str):
    raise SampleError('bad_record', sample_id, f'"{key}" must be a string or one assistant '
                      f'message, got {type(value).__name__}')
  return value


def normalize_pair_record(record, index: int, image_root: str | None = None) -> dict:
  """A pair record -> a raw pair (or a raw sample with an 'error'); never raises."""
  if not isinstance(record, dict):
    return _bad(f'#{index}', 'bad_record', f'record is a {type(record).__name__}, not an object')
  sample_id = str(record.get('id', f'#{index}'))
  images = {k: record[k] for k in ('image', 'images') if k in record}
  prompt = record.get('prompt', record.get('question'))
  if 'conversations' in record or 'messages' in record:
    key = 'conversations' if 'conversations' in record else 'messages'
    base = {key: record[key]}
  elif isinstance(prompt, str):
    base = {'messages': [{'role': 'user', 'content': prompt}]}
  elif isinstance(prompt, list):
    base = {'messages': prompt}
  else:
    return _bad(sample_id, 'bad_record', 'a pair needs "prompt" (or "question") or "conversations"')
  raw = normalize_record({'id': sample_id, **images, **base}, index, image_root)
  if 'error' in raw:
    return raw
  messages = raw['messages']
  if not messages or messages[-1]['role'] != 'user':
    return _bad(sample_id, 'bad_record', 'the prompt of a pair must end with a user turn')
  if raw['images'] and not any(IMAGE in m['content'] for m in messages):
    first = next(i for i, m in enumerate(messages) if m['role'] == 'user')
    messages[first] = {**messages[first],
                       'content': f'{IMAGE}\n' * len(raw['images']) + messages[first]['content']}
  try:
    for key in ANSWERS:
      if key not in record:
        raise SampleError('bad_record', sample_id, 'a pair needs "chosen" and "rejected"')
      raw[key] = _answer(record[key], sample_id, key)
  except SampleError as e:
    return _bad(sample_id, e.reason, e.detail)
  given = [k in record for k in ('ref_chosen_logps', 'ref_rejected_logps')]
  if any(given):
    values = [record.get(k) for k in ('ref_chosen_logps', 'ref_rejected_logps')]
    if not all(given) or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
      return _bad(sample_id, 'bad_record', 'ref_chosen_logps and ref_rejected_logps must both '
                  f'be finite numbers, got {values}')
    raw['ref_logps'] = [float(v) for v in values]
  return raw


class PairProcessor(SampleProcessor):
  """Picklable callable: raw pair -> pair example (see the module docstring), or SampleError.

  `reference_columns`: the example carries the record's reference log-probabilities (a pair
  without them is skipped as a bad record).
  """

  def __init__(self, cfg, tokenizer, reference_columns: bool = False):
    super().__init__(cfg, tokenizer)
    if getattr(cfg.video, 'max_patches', 0):
      raise ValueError('preference pairs take images, not videos: set data.video.max_patches=0')
    self.reference_columns = reference_columns

  def __call__(self, raw: dict) -> dict:
    sample_id = raw['id']
    if 'error' in raw:
      raise SampleError(raw['error'][0], sample_id, raw['error'][1])
    conversations = [{**raw, 'messages': [*raw['messages'], {'role': 'assistant',
                                                              'content': raw[key]}]}
                     for key in ANSWERS]
    for conversation in conversations:
      self.check_structure(conversation)
    tokens = [self.tokens(c) for c in conversations]
    pil_images = [load_image(ref, sample_id) for ref in raw['images']]  # once for both
    expanded = [self.expand(sample_id, *t, pil_images) for t in tokens]
    kept = sorted({keep for _, _, keep in expanded})
    if len(kept) > 1:  # both answers must read the same images
      raise SampleError('too_long', sample_id, f'max_length {self.cfg.max_length} cuts an image '
                        'from one answer of the pair but not from the other')
    targets = [next_token_targets(ids, assistant, sample_id, self.cfg.max_length)
               for ids, assistant, _ in expanded]
    images, processed = self.image_arrays(sample_id, pil_images[:kept[0]], len(pil_images) > 1)
    chosen, rejected = (self.text_arrays(ids, t, processed)
                        for (ids, _, _), t in zip(expanded, targets))
    example = {**chosen, **{REJECTED + k: v for k, v in rejected.items()}, **images}
    if self.reference_columns:
      if 'ref_logps' not in raw:
        raise SampleError('bad_record', sample_id, 'no ref_chosen_logps / ref_rejected_logps '
                          "(train.dpo.reference='precomputed' reads them from every pair)")
      example[REFERENCE_FEATURE] = np.asarray([raw['ref_logps']], np.float32)  # [1, 2]
    return example


def length_struct(cfg, reference_columns: bool) -> dict[str, int]:
  """Per-feature budgets of a packed row pair: both answers' text in T each, images as SFT."""
  lengths = packing.length_struct(cfg)
  for key in packing.TEXT_FEATURES + (('mrope_positions',) if cfg.mrope else ()):
    lengths[REJECTED + key] = cfg.max_length
  if reference_columns:
    lengths[REFERENCE_FEATURE] = cfg.max_length  # one slot per pair: never the tighter budget
  return lengths


def finalize_pair_row(row: dict) -> dict:
  """One packed row pair from grain -> the pair batch schema (no leading batch axis)."""
  chosen = packing.finalize_row(row)
  rejected_view = {**row, **{k[len(REJECTED):]: v for k, v in row.items()
                             if k.startswith(REJECTED)}}
  rejected = packing.finalize_row(rejected_view)
  out = dict(chosen)
  for key in ANSWER_KEYS:
    if key in chosen:
      out[key] = np.stack([chosen[key], rejected[key]])  # [2, T(, 3)]
  if REFERENCE_FEATURE in row:
    used = row[f'{REFERENCE_FEATURE}_segment_ids'] > 0  # [T]: slot k is segment k + 1's pair
    values = np.where(used[:, None], row[REFERENCE_FEATURE], 0.0).astype(np.float32)  # [T, 2]
    out['ref_chosen_logps'], out['ref_rejected_logps'] = values[:, 0], values[:, 1]
  return out


def pair_structs(batch: dict, sds, reference_columns: bool) -> dict:
  """An SFT batch's `sds(shape, dtype)` structs -> a pair batch's (for `mmjax aot`): the answer
  arrays get the answer axis, the reference columns are added."""
  out = {k: sds((v.shape[0], 2, *v.shape[1:]), v.dtype) if k in ANSWER_KEYS else v
         for k, v in batch.items()}
  if reference_columns:
    b, t = batch['input_ids'].shape
    out.update({k: sds((b, t), np.float32) for k in REFERENCE_KEYS})
  return out


def answer_rows(batch: dict) -> dict:
  """A pair batch as the decoder sees it, for FLOP counts: `input_ids` as a `[2B, T]` struct
  (both answers are rows; the images are encoded once). SFT batches pass through."""
  ids = batch['input_ids']
  if len(ids.shape) != 3:
    return batch
  import jax  # pylint: disable=g-import-not-at-top

  b, answers, t = ids.shape
  return {**batch, 'input_ids': jax.ShapeDtypeStruct((b * answers, t), np.int32)}

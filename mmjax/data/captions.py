"""Image-caption pairs for contrastive training (`train.objective` `clip` / `siglip`).

Any source of the pipeline works (`mmjax.data.sources`: JSON / JSONL, Parquet and WebDataset
caption shards, ArrayRecord, TFDS): a record is read as the SFT record it is, and a pair is its
one image and, as the caption, its last assistant turn (what those sources make of a `caption` /
`txt` column; a captioning conversation's answer). The user turn's text, if any, is not used.

An example, and a batch row (no packing: every pair is a row of its own)::

  pixels     [H, W, 3] float32  the image preprocessed as the image tower takes it (one tile)
  text_ids   [L] int32          the caption tokenized with the tokenizer's special tokens (CLIP:
                                `<|startoftext|> ... <|endoftext|>`; SigLIP: `... </s>`), cut to
                                L = max_length keeping its last token (`data.truncate`), then
                                padded with the tokenizer's pad token
  text_mask  [L] int32          1 = caption token, 0 = padding
"""

from __future__ import annotations

import numpy as np

from mmjax.data import preprocess
from mmjax.data.sample import load_image
from mmjax.data.validation import SampleError

KEYS = ('pixels', 'text_ids', 'text_mask')


class CaptionProcessor:
  """Picklable callable: raw sample -> image-caption example (module docstring), or SampleError."""

  def __init__(self, cfg, tokenizer):
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.images = preprocess.ImageProcessor(cfg.image)
    pad = tokenizer.special_token('pad_token')
    self.pad_id = tokenizer.token_to_id(pad) if pad else 0

  def caption_ids(self, sample_id: str, text: str) -> np.ndarray:
    ids, _ = self.tokenizer.encode(text.strip(), add_special_tokens=True)
    limit = self.cfg.max_length
    if len(ids) > limit:
      if not self.cfg.truncate:
        raise SampleError('too_long', sample_id, f'caption of {len(ids)} tokens > max_length {limit}')
      # Keep the last token: the end-of-text token CLIP's tower pools at (when it adds one).
      ids = np.concatenate([ids[:limit - 1], ids[-1:]])
    return ids

  def __call__(self, raw: dict) -> dict:
    sample_id = raw['id']
    if 'error' in raw:
      raise SampleError(raw['error'][0], sample_id, raw['error'][1])
    if len(raw['images']) != 1:
      raise SampleError('image_count_mismatch', sample_id,
                        f'an image-caption pair has one image, this record has {len(raw["images"])}')
    answers = [m['content'] for m in raw['messages']
               if m.get('role') == 'assistant' and isinstance(m.get('content'), str)
               and m['content'].strip()]
    if not answers:
      raise SampleError('empty_conversation', sample_id, 'no caption (a non-empty assistant turn)')
    ids = self.caption_ids(sample_id, answers[-1])
    processed = self.images(load_image(raw['images'][0], sample_id))
    tiles = self.images.sample_tiles(processed)
    if len(tiles) != 1:
      raise SampleError('too_many_images', sample_id, f'the image makes {len(tiles)} tiles; a '
                        'contrastive image tower takes one (use a fixed-size image preset)')
    text_ids = np.full(self.cfg.max_length, self.pad_id, np.int32)
    text_ids[:len(ids)] = ids
    text_mask = (np.arange(self.cfg.max_length) < len(ids)).astype(np.int32)
    return {'pixels': tiles[0].astype(np.float32, copy=False), 'text_ids': text_ids,
            'text_mask': text_mask}

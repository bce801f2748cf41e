"""Packing: several examples per fixed-size row, first-fit, with segment ids and positions.

The packing itself is grain's ``FirstFitPackIterDataset``: every feature of an example is packed
along its first axis into a per-feature budget (``length_struct``): text features into the row
length T, image tiles into ``max_tiles`` slots, per-image metadata into ``max_images`` slots; a
sample goes into the first open row where *all* its features fit. Grain emits, per feature,
``<name>_segment_ids`` (0 = padding, 1.. = sample within the row) and ``<name>_positions``
(position within the sample). ``finalize_row`` turns one packed row into the batch schema
documented in ``mmjax.data.pipeline``; ``padding_fraction`` reports the waste.

``max_sequences_per_bin=1`` (``cfg.packing=False``) gives plain padding: one example per row.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mmjax.data import preprocess
from mmjax.data.validation import REASONS

TEXT_FEATURES = ('input_ids', 'labels', 'loss_mask')
IMAGE_FEATURES = ('image_sizes', 'image_tiles')  # One entry per image.
SKIP_COUNTS = 'skip_counts'  # Per-example vector of skips seen before it (non-sequence meta feature).


def length_struct(cfg) -> dict[str, int]:
  """Per-feature budgets of a packed row."""
  lengths = {k: cfg.max_length for k in TEXT_FEATURES}
  lengths['pixel_values'] = cfg.max_tiles
  lengths.update({k: cfg.max_tiles for k in preprocess.tile_features(cfg.image)})
  lengths.update({k: cfg.max_images for k in IMAGE_FEATURES})
  lengths.update({k: cfg.max_images for k in preprocess.per_image_features(cfg.image)})
  lengths.update({k: cfg.max_length for k in preprocess.token_features(cfg.image)})
  if cfg.mrope:
    lengths['mrope_positions'] = cfg.max_length
  if cfg.image.family == 'qwen2_vl':
    if cfg.video.max_patches:  # mmjax.data.media_sample
      lengths['pixel_values_videos'] = cfg.video.max_patches
      lengths['video_grid_thw'] = cfg.video.max_videos
  return lengths


def pack(dataset, cfg, num_bins: int | None = None, lengths: dict[str, int] | None = None,
         finalize=None):
  """grain IterDataset of examples -> IterDataset of packed rows (see ``finalize_row``);
  ``lengths`` and ``finalize`` replace ``length_struct(cfg)`` and ``finalize_row`` (pairs:
  ``mmjax.data.pairs``)."""
  import grain  # pylint: disable=g-import-not-at-top
  packed = grain.experimental.FirstFitPackIterDataset(
      dataset,
      length_struct=lengths or length_struct(cfg),
      num_packing_bins=num_bins or cfg.packing_bins,
      seed=cfg.seed,
      shuffle_bins=False,
      meta_features=(SKIP_COUNTS,),
      max_sequences_per_bin=None if cfg.packing else 1,
  )
  return packed.map(finalize or finalize_row)


def finalize_row(row: dict) -> dict:
  """One packed row from grain -> the per-row batch schema (arrays, no leading batch axis)."""
  segment_ids = row['input_ids_segment_ids']  # [T]
  tile_segments = row['pixel_values_segment_ids']  # [max_tiles]
  image_segments = row['image_tiles_segment_ids']  # [max_images]
  out = {
      'input_ids': row['input_ids'].astype(np.int32),
      'labels': row['labels'].astype(np.int32),
      'loss_mask': row['loss_mask'].astype(np.float32),
      'attention_mask': (segment_ids > 0).astype(np.int32),
      'segment_ids': segment_ids.astype(np.int32),
      'positions': row['input_ids_positions'].astype(np.int32),
      'pixel_values': row['pixel_values'],
      'image_mask': tile_segments > 0,
      'image_segment_ids': image_segments.astype(np.int32),
      'image_sizes': row['image_sizes'].astype(np.int32),
      'image_tiles': row['image_tiles'].astype(np.int32),
      'num_images': np.int32((image_segments > 0).sum()),
  }
  for key in preprocess.ALL_TILE_FEATURES:  # the image family's arrays per tile
    if key in row:
      out[key] = row[key].astype(np.int32)
  for key in preprocess.ALL_PER_IMAGE_FEATURES:  # the image family's arrays per image
    if key in row:
      out[key] = row[key].astype(np.int32)
  for key in ('pixel_values_videos', 'video_grid_thw'):  # videos: patches, then their grids
    if key in row:
      out[key] = row[key] if key == 'pixel_values_videos' else row[key].astype(np.int32)
  for key in preprocess.ALL_TOKEN_FEATURES:  # the image family's arrays per token
    if key in row:
      out[key] = row[key]
  if 'image_token_source' in row:  # tiles of the sample -> tile slots of the row
    out['image_token_source'] = rebase_tiles(row['image_token_source'], segment_ids, tile_segments)
  if 'mrope_positions' in row:
    out['mrope_positions'] = row['mrope_positions'].astype(np.int32)  # [T, 3]
  counts = np.zeros(len(REASONS), np.int64)
  for vector in row.get(SKIP_COUNTS, ()):
    counts += np.asarray(vector, np.int64)
  out[SKIP_COUNTS] = counts
  return out


def rebase_tiles(source: np.ndarray, segment_ids: np.ndarray,
                 tile_segments: np.ndarray) -> np.ndarray:
  """`source [T, ..., 2]` (each token's sources, as (tile of its sample, feature); tile -1: none)
  -> the same with the tiles as slots of the row: a sample's tiles were packed contiguously from
  its first slot."""
  out = source.astype(np.int32).copy()
  tile = out[..., 0]  # [T, ...] (a view: written through)
  segments = segment_ids.reshape(-1, *[1] * (tile.ndim - 1))  # [T, 1...]
  for s in np.unique(np.broadcast_to(segments, tile.shape)[(segments > 0) & (tile >= 0)]):
    first = int(np.argmax(tile_segments == s))
    tile[(segments == s) & (tile >= 0)] += first
  return out


def padding_fraction(batches: dict | Iterable[dict]) -> float:
  """Fraction of text positions that are padding, over one batch or several."""
  if isinstance(batches, dict):
    batches = [batches]
  real = total = 0
  for batch in batches:
    mask = np.asarray(batch['attention_mask'])
    real += int(mask.sum())
    total += mask.size
  return 1.0 - real / total if total else 0.0

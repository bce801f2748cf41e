"""The grain input pipeline: sources -> samples -> packed rows -> host-local batches -> jax.Arrays.

Stages (``build_dataset``)::

  MapDataset.source(src)[process_index::process_count]   host shard (before shuffling)
    .shuffle(seed).repeat(num_epochs)                       per source, reshuffled every epoch
  MapDataset.mix(sources, weights)                         weighted mixture (Flamingo-style)
    .map(preprocess)                                       image + template + tokens (interleaved
                                                           documents: no template), or a skip marker
    .to_iter_dataset() -> skip counter                     drops skips, counts them per reason
    -> first-fit packing -> .batch(B / process_count) -> flatten image slots
    .mp_prefetch(num_workers)                              worker processes

Everything is seeded: the same config, seed and worker count give the same batches, and
``DataIterator.get_state()/set_state()`` (grain's iterator state plus our counters, JSON-able)
resume exactly.

Batch schema (host-local; B = per-host rows, T = max_length, S = max_tiles, M = max_images)::

  input_ids        [B, T]    int32    tokens; an image placeholder is expanded to the image's
                                      token count (all = image_token_id); padding = 0
  labels           [B, T]    int32    next-token targets: logits[:, t] predicts labels[:, t]
  loss_mask        [B, T]    float32  1 on assistant targets (end-of-turn included), else 0;
                                      documents: 1 on every text target (mmjax.data.documents)
  attention_mask   [B, T]    int32    1 = real token, 0 = padding
  segment_ids      [B, T]    int32    0 = padding, 1..k = k-th sample packed in the row
  positions        [B, T]    int32    position within its sample (restarts at 0 per segment)
  mrope_positions  [B, T, 3] int32    (qwen2_vl with cfg.mrope) Qwen2-VL (t, h, w) positions
  pixel_values     [B*S, H, W, 3] float32 NHWC image tiles, row-major: row b owns slots
                                      [b*S, (b+1)*S); its tiles are in the order its image
                                      tokens appear; unused slots are zeros
                   (qwen2_vl: [B*S, 3*T*P*P] flattened patches, S = patch budget;
                    pixtral: [B*S, 3, P, P] patches; fuyu: [B*S, P*P*3] raw patches)
  image_mask       [B*S]     bool     1 = real tile
  patch_positions  [B*S, 2]  int32    (pixtral) (row, column) of each patch in its image's grid
  image_token_source [B, T, 2] int32  (anyres) per token: (tile slot of the row, feature within
                                      the tile); slot -1 for a grid row's newline / text
                   [B, T, 4, 2]       (onevision) the four sources of each token's bilinear mix
                   [B, T, k*k, 2]     (pixtral) the patch slots of each [IMG] (k: merge_size;
                                      feature 0)
  image_token_weights [B, T, 4] float32 (onevision) the mix's weights (w0, w1, h0, h1); video
                                      tokens carry both too
  image_sizes      [B*M, 2]  int32    original (h, w) per image, row b owns [b*M, (b+1)*M)
  image_tiles      [B*M]     int32    tiles (qwen2_vl: patches) of each image, 0 for unused slots
  image_segment_ids [B*M]    int32    segment of the row each image belongs to (0 = unused)
  <per-image arrays> [B*M, ...]       the image family's (``preprocess.per_image_features``):
                                      image_grid_thw [B*M, 3] (qwen2_vl) patch grid per image;
                                      aspect_ratio_ids [B*M] (mllama, 0 = unused slot) and
                                      aspect_ratio_mask [B*M, S/M] (each image owns S/M tiles);
                                      image_is_video [B*M] (onevision) 1: the slot is a video
                                      whose frames are its tiles (mmjax.data.onevision_sample)
  pixel_values_videos [B*V, 3*T*P*P] float32 (qwen2_vl with video.max_patches = V) video
                                      patches, row b owns [b*V, (b+1)*V), in the order of its
                                      video tokens (mmjax.data.media_sample)
  video_grid_thw   [B*N, 3]  int32    (with videos; N = video.max_videos) (t, h, w) per video
  num_images       [B]       int32    images in each row (0 for text-only rows)

Global batches: ``DataIterator(..., mesh=mesh)`` (or ``to_global``) assemble every array with
``jax.make_array_from_process_local_data`` sharded over the mesh's data axes on the leading axis.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from mmjax.data import captions, packing, pairs, preprocess
from mmjax.data.preprocess import ImageConfig, preset
from mmjax.data.media_sample import MediaSampleProcessor
from mmjax.data.onevision_sample import OnevisionSampleProcessor
from mmjax.data.sample import SampleProcessor
from mmjax.data.sources import open_source
from mmjax.data.tokenizer import Tokenizer
from mmjax.data.validation import REASONS, SampleError, SkipCounter, TooManySkips, counts_vector
from mmjax.data.video import VideoConfig

log = logging.getLogger('mmjax.data')

# Image families whose samples may hold videos: their processors (others ignore `videos`).
VIDEO_PROCESSORS = {'qwen2_vl': MediaSampleProcessor, 'onevision': OnevisionSampleProcessor}
FLAT_TILE_KEYS = ('pixel_values', 'image_mask', *preprocess.ALL_TILE_FEATURES)
FLAT_IMAGE_KEYS = ('image_sizes', 'image_tiles', 'image_segment_ids', 'pixel_values_videos',
                   'video_grid_thw',  # videos: mmjax.data.media_sample
                   *preprocess.ALL_PER_IMAGE_FEATURES)


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  path: str  # .json / .jsonl, Parquet / tar / ArrayRecord shards (glob, {a..b}, dir), 'tfds:NAME[:SPLIT]'
  image_root: str | None = None
  weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Everything the pipeline needs; model-specific knobs are ``image``, ``image_token``,
  ``image_start``/``image_end`` and ``template``."""
  image: ImageConfig = ImageConfig()
  template: str = 'vicuna_v1'  # see templates.BUILTIN, or 'tokenizer' for its chat_template
  tokenizer: str = ''  # tokenizer.json or a directory with it
  image_token: str = '<image>'  # vocabulary token repeated once per image token
  image_start: str = ''  # optional single-token wrappers around an image's run, e.g. '<img>'
  image_end: str = ''
  max_length: int = 2048  # T
  truncate: bool = True  # else over-length samples are skipped
  max_tiles: int = 4  # S: image tile (qwen2_vl: patch) slots per row
  max_images: int = 4  # M: image slots per row
  packing: bool = True  # False: one sample per row
  packing_bins: int = 0  # rows packed at once (0 = the per-host batch size)
  batch_size: int = 8  # global rows per step
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None  # None = repeat forever
  num_workers: int = 0  # grain worker processes (0 = in the main process)
  worker_buffer_size: int = 2
  read_threads: int = 8  # threads preprocessing samples in each process (grain ReadOptions)
  read_buffer: int = 64  # samples preprocessed ahead in each process
  drop_remainder: bool = True
  mrope: bool = False  # qwen2_vl: also emit 3-D M-RoPE positions
  video: VideoConfig = VideoConfig()  # qwen2_vl: videos (off unless video.max_patches > 0)
  max_consecutive_skips: int = 1000  # more bad samples in a row than this is an error
  # Preference pairs (mmjax.data.pairs; the trainer sets these from train.objective): records
  # with chosen and rejected answers, and whether they carry reference log-probabilities.
  pairs: bool = False
  reference_columns: bool = False
  # Image-caption pairs (mmjax.data.captions; set from train.objective clip / siglip): one
  # image and its caption a row, no packing.
  captions: bool = False
  sources: tuple[SourceConfig, ...] = ()

  @classmethod
  def from_dict(cls, d: Any) -> 'DataConfig':
    """From a dict / ml_collections.ConfigDict. ``image`` may be a dict or a preset name, and
    ``image_preset`` + ``image_overrides`` are accepted too."""
    d = dict(d.to_dict() if hasattr(d, 'to_dict') else d)
    image = d.pop('image', None)
    image_preset = d.pop('image_preset', None)
    overrides = dict(d.pop('image_overrides', None) or {})
    if isinstance(image, str):
      image_preset, image = image, None
    if image_preset:
      image = preset(image_preset, **overrides)
    elif isinstance(image, dict):
      image = ImageConfig(**{**image, **overrides})
    elif image is None:
      image = ImageConfig(**overrides)
    sources = tuple(s if isinstance(s, SourceConfig) else SourceConfig(**dict(s))
                    for s in (d.pop('sources', None) or ()))
    video = d.pop('video', None) or {}
    video = video if isinstance(video, VideoConfig) else VideoConfig(**dict(video))
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise ValueError(f'unknown data config keys {sorted(unknown)}; expected some of {sorted(fields)}')
    return cls(image=image, sources=sources, video=video, **d)

  def __post_init__(self):
    preprocess.check_row_budget(self.image, self.max_tiles, self.max_images)

  def host_batch_size(self, process_count: int) -> int:
    if self.batch_size % process_count:
      raise ValueError(f'batch_size {self.batch_size} is not divisible by {process_count} processes')
    return self.batch_size // process_count


class _Preprocess:
  """raw sample -> example, or a skip marker {'_skip': reason} (never raises on bad data)."""

  def __init__(self, processor: SampleProcessor):
    self.processor = processor
    self.counter = SkipCounter()  # Per worker process: logs the first ids of each reason.

  def __call__(self, raw: dict) -> dict:
    try:
      return self.processor(raw)
    except SampleError as e:
      self.counter.add(e)
      return {'_skip': e.reason}


class _SkipCountingIterator:
  """Drops skip markers; attaches the per-reason counts seen since the last example to the next.

  ``max_consecutive_skips`` in a row means the data (or the config: max_length, image token...) is
  unusable; that raises instead of spinning forever on a repeated dataset.
  """

  def __init__(self, parent, max_consecutive_skips: int = 1000):
    self._parent = parent
    self._pending = np.zeros(len(REASONS), np.int64)
    self._max_consecutive = max_consecutive_skips

  def __iter__(self):
    return self

  def __next__(self):
    while True:
      element = next(self._parent)
      if '_skip' in element:
        self._pending[REASONS.index(element['_skip'])] += 1
        if self._pending.sum() >= self._max_consecutive:
          counts = {r: int(n) for r, n in zip(REASONS, self._pending) if n}
          raise TooManySkips(f'{int(self._pending.sum())} samples in a row were skipped '
                             f'({counts}); run `mmjax data check` on the dataset and check '
                             'max_length / image_token')
        continue
      element[packing.SKIP_COUNTS] = self._pending
      self._pending = np.zeros(len(REASONS), np.int64)
      return element

  def get_state(self):
    return {'parent': self._parent.get_state(), 'pending': [int(x) for x in self._pending]}

  def set_state(self, state):
    self._parent.set_state(state['parent'])
    self._pending = np.asarray(counts_vector(state['pending']), np.int64)


def _skip_counting_dataset(parent, max_consecutive_skips: int):
  import grain  # pylint: disable=g-import-not-at-top

  class _Iterator(grain.DatasetIterator):
    def __init__(self, parent_iter):
      super().__init__(parent_iter)
      self._impl = _SkipCountingIterator(parent_iter, max_consecutive_skips)

    def __next__(self):
      return self._impl.__next__()

    def get_state(self):
      return self._impl.get_state()

    def set_state(self, state):
      self._impl.set_state(state)

  class _Dataset(grain.IterDataset):
    def __iter__(self):
      return _Iterator(self._parent.__iter__())

  return _Dataset(parent)


def flatten_image_slots(batch: dict) -> dict:
  """[B, S, ...] image-slot arrays -> [B*S, ...] (rows stay contiguous)."""
  for key in FLAT_TILE_KEYS + FLAT_IMAGE_KEYS:
    if key in batch:
      value = batch[key]
      batch[key] = value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])
  return batch


def mixed_sources(cfg: DataConfig, sources: Sequence[Any] | None = None, *, process_index: int,
                  process_count: int):
  """The raw samples of every source, this host's share, shuffled and mixed by weight: a grain
  `MapDataset` (the pipeline's first stages).

  `MapDataset.mix` interleaves the sources deterministically in proportion to their weights
  (normalised to sum to 1): with Flamingo's 1.0 / 0.2 / 0.2 / 0.03, 1000 / 1.43 ~ 699, 140, 140
  and 21 of every 1000 samples come from the four sources, whatever their sizes (a small source
  repeats, reshuffled every epoch). ``sources`` (random-access objects) overrides
  ``cfg.sources``; weights then come from ``cfg.sources`` if it has as many entries, else are
  uniform.
  """
  import grain  # pylint: disable=g-import-not-at-top
  if sources is None:
    if not cfg.sources:
      raise ValueError('no data sources: set data.sources or pass sources=')
    sources = [open_source(s.path, s.image_root, pairs=cfg.pairs) for s in cfg.sources]
  weights = ([s.weight for s in cfg.sources] if len(cfg.sources) == len(sources) else [1.0] * len(sources))
  if any(not w > 0 for w in weights):
    raise ValueError(f'data.sources weights must be positive, got {weights}')

  datasets = []
  for i, source in enumerate(sources):
    ds = grain.MapDataset.source(source)
    if len(ds) < process_count:
      raise ValueError(f'source {source!r} has {len(ds)} samples, fewer than {process_count} processes')
    if hasattr(source, 'blocks'):  # Parquet row groups, tar shards: split and mixed by block
      from mmjax.data.blocks import block_dataset  # pylint: disable=g-import-not-at-top
      ds = block_dataset(source, process_index=process_index, process_count=process_count,
                         seed=cfg.seed + 1000 * i, shuffle=cfg.shuffle)
    else:
      ds = ds[process_index::process_count]
      if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed + 1000 * i)
    ds = ds.repeat(cfg.num_epochs) if cfg.num_epochs != 1 else ds
    datasets.append(ds)
  return datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights=weights)


def build_dataset(cfg: DataConfig, tokenizer: Tokenizer | None = None, sources: Sequence[Any] | None = None,
                  *, process_index: int | None = None, process_count: int | None = None):
  """The grain IterDataset of host-local batches (dicts of numpy arrays, schema above).

  ``sources``: see ``mixed_sources``. Process index/count default to JAX's.
  """
  import grain  # pylint: disable=g-import-not-at-top
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  tokenizer = tokenizer or Tokenizer.load(cfg.tokenizer)
  ds = mixed_sources(cfg, sources, process_index=process_index, process_count=process_count)

  if cfg.captions:
    processor, layout = captions.CaptionProcessor(cfg, tokenizer), {}
  elif cfg.pairs:
    processor = pairs.PairProcessor(cfg, tokenizer, cfg.reference_columns)
    layout = dict(lengths=pairs.length_struct(cfg, cfg.reference_columns),
                  finalize=pairs.finalize_pair_row)
  else:
    kind = VIDEO_PROCESSORS.get(cfg.image.family, SampleProcessor)
    processor, layout = kind(cfg, tokenizer), {}
  ds = ds.map(_Preprocess(processor))
  read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_buffer)
  ds = _skip_counting_dataset(ds.to_iter_dataset(read), cfg.max_consecutive_skips)
  host_batch = cfg.host_batch_size(process_count)
  if cfg.captions:  # fixed-size pairs: nothing to pack
    ds = ds.batch(host_batch, drop_remainder=cfg.drop_remainder)
  else:
    ds = packing.pack(ds, cfg, num_bins=cfg.packing_bins or host_batch, **layout)
    ds = ds.batch(host_batch, drop_remainder=cfg.drop_remainder).map(flatten_image_slots)
  if cfg.num_workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we are not an absl app.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers,
                                                     per_worker_buffer_size=cfg.worker_buffer_size))
  return ds


def to_global(batch: dict, mesh, data_axes: str | Sequence[str] = ('data',)) -> dict:
  """Host-local numpy batch -> global jax.Arrays, leading axis sharded over ``data_axes``."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  axes = (data_axes,) if isinstance(data_axes, str) else tuple(data_axes)
  axes = tuple(a for a in axes if a in mesh.axis_names)
  spec = PartitionSpec(axes if len(axes) > 1 else (axes[0] if axes else None))
  sharding = NamedSharding(mesh, spec)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


class DataIterator:
  """Iterator over batches with checkpointable state and running statistics.

  ``next()`` gives the host-local numpy batch (or global jax.Arrays if ``mesh`` is given);
  ``stats()`` reports samples, skipped samples per reason and the padding fraction so far.
  """

  def __init__(self, dataset, mesh=None, data_axes: str | Sequence[str] = ('data',)):
    self._dataset = dataset
    self._it = iter(dataset)
    self.mesh, self.data_axes = mesh, data_axes
    self.skips = SkipCounter(log_first=0)
    self.samples = self.real_tokens = self.total_tokens = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    self.skips.add_counts(np.asarray(batch.pop(packing.SKIP_COUNTS)).sum(axis=0))
    if 'segment_ids' in batch:
      segments = np.asarray(batch['segment_ids'])
      if segments.ndim == 3:  # pairs [B, 2, T]: a pair is one sample
        segments = segments[:, 0]
      self.samples += int(segments.max(axis=1).sum())
      real = np.asarray(batch['attention_mask'])
    else:  # image-caption pairs: a row each
      real = np.asarray(batch['text_mask'])
      self.samples += len(real)
    self.real_tokens += int(real.sum())
    self.total_tokens += int(real.size)
    return to_global(batch, self.mesh, self.data_axes) if self.mesh is not None else batch

  def stats(self) -> dict:
    return {'samples': self.samples, 'skipped': self.skips.as_dict(),
            'padding_fraction': 1.0 - self.real_tokens / self.total_tokens if self.total_tokens else 0.0}

  def get_state(self) -> dict:
    return {'grain': self._it.get_state(), 'skipped': self.skips.vector(), 'samples': self.samples,
            'real_tokens': self.real_tokens, 'total_tokens': self.total_tokens}

  def set_state(self, state: dict) -> None:
    self._it.set_state(state['grain'])
    self.skips = SkipCounter(log_first=0)
    self.skips.add_counts(state['skipped'])
    self.samples, self.real_tokens, self.total_tokens = (
        state['samples'], state['real_tokens'], state['total_tokens'])

  def close(self) -> None:
    close = getattr(self._it, 'close', None)
    if close is not None:
      close()


def make_iterator(cfg: DataConfig, tokenizer: Tokenizer | None = None, sources=None, mesh=None,
                  data_axes: str | Sequence[str] = ('data',)) -> DataIterator:
  """``DataIterator(build_dataset(cfg, ...), mesh)``: the one call the trainer needs."""
  return DataIterator(build_dataset(cfg, tokenizer, sources), mesh=mesh, data_axes=data_axes)

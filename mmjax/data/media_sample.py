"""Qwen-VL samples with videos: `<video>` placeholders, temporal patches, M-RoPE positions.

A raw sample may carry `videos` (references `mmjax.data.video.load_frames` reads) beside its
`images`, one `<video>` placeholder in the text per video. The placeholder becomes, as the Qwen
processors write it, `<|vision_start|><|video_pad|><|vision_end|>` with the pad repeated once per
merged token of the video (`t * h * w / merge^2`; Qwen3-VL: per temporal patch
`<{t:.1f} seconds><|vision_start|>` + the frame's pads + `<|vision_end|>`, inside the outer
start / end). Positions are `get_rope_index`'s (`mmjax.models.qwen_vl_positions.rope_index`, at
parity with transformers), with Qwen2.5-VL's `second_per_grid_ts`.

Extra example features (for `mmjax.data.packing`) when `data.video.max_patches > 0`:

  pixel_values_videos [n_video_patches, C * T * P * P] float32
  video_grid_thw      [n_videos, 3] int32

Samples without videos go through `SampleProcessor` as before (with empty video features).
"""

from __future__ import annotations

import numpy as np

from mmjax.data.sample import SampleProcessor, load_image, next_token_targets
from mmjax.data.sources import IMAGE
from mmjax.data.validation import SampleError
from mmjax.data.video import VideoConfig, VideoError, load_frames, process_video

VIDEO = '<video>'


def frames_or_skip(ref, sample_id: str, cfg: VideoConfig, temporal: int):
  """`load_frames`, its errors as SampleError(missing_video | corrupt_video)."""
  try:
    return load_frames(ref, cfg, temporal)
  except VideoError as e:
    raise SampleError('missing_video' if e.missing else 'corrupt_video', sample_id, str(e)) from e


def check_video(ref, sample_id: str) -> None:
  """What `mmjax data check` asks of a video: its frames (2 fps sampling) decode."""
  frames_or_skip(ref, sample_id, VideoConfig(), temporal=2)


class MediaSampleProcessor(SampleProcessor):
  """`SampleProcessor` for the `qwen2_vl` image family that also takes videos."""

  def __init__(self, cfg, tokenizer):
    super().__init__(cfg, tokenizer)
    self.video = cfg.video
    self.video_id = tokenizer.token_to_id(cfg.video.token) if cfg.video.max_patches else None
    self._width = 3 * cfg.image.temporal_patch_size * cfg.image.patch_size ** 2
    if cfg.video.max_patches % cfg.image.merge_size ** 2:
      raise ValueError(f'data.video.max_patches {cfg.video.max_patches} must be a multiple of '
                       f'{cfg.image.merge_size ** 2}, the patches one merged token takes')

  def _empty_videos(self, example: dict) -> dict:
    example['pixel_values_videos'] = np.zeros((0, self._width), np.float32)
    example['video_grid_thw'] = np.zeros((0, 3), np.int32)
    return example

  def __call__(self, raw: dict) -> dict:
    videos = raw.get('videos') or []
    if not videos:
      example = super().__call__(raw)
      return self._empty_videos(example) if self.video.max_patches else example
    if not self.video.max_patches:
      raise SampleError('bad_record', raw['id'], f'{len(videos)} videos, but the pipeline takes '
                        'none: set data.video.max_patches (and data.video.max_videos)')
    return self._with_videos(raw, videos)

  # ---- pieces -------------------------------------------------------------------------------------

  def _load(self, raw: dict, videos: list):
    out = []
    for ref in videos:
      frames, fps, indices, total = frames_or_skip(ref, raw['id'], self.video,
                                                   self.cfg.image.temporal_patch_size)
      out.append(process_video(frames, fps, indices, total, self.cfg.image, self.video))
    return out

  def _video_text(self, processed) -> str:
    cfg = self.cfg
    start, end, pad = cfg.image_start, cfg.image_end, self.video.token
    if self.video.model_type != 'qwen3_vl':
      return f'{start}{pad}{end}'
    frames = ''.join(f'<{t:.1f} seconds>{start}{pad}{end}' for t in processed.timestamps)
    return f'{start}{frames}{end}'

  def _runs(self, ids: np.ndarray, images, processed):
    """Placeholder runs in text order: (position, tokens, 'image' | 'video', media index); a
    Qwen3-VL video has one run per temporal patch."""
    m2 = self.cfg.image.merge_size ** 2
    runs = [(int(p), self.images.num_tokens(im.height, im.width), 'image', i)
            for i, (p, im) in enumerate(zip(np.flatnonzero(ids == self.image_id), images))]
    per_video = []
    for v, video in enumerate(processed):
      t, h, w = video.grid_thw
      per_video += [(v, h * w // m2)] * t if self.video.model_type == 'qwen3_vl' else [(v, t * h * w // m2)]
    positions = np.flatnonzero(ids == self.video_id)
    if len(positions) != len(per_video):
      raise SampleError('image_count_mismatch', '', f'{len(positions)} video tokens after templating '
                        f'but {len(per_video)} video placeholders expected')
    runs += [(int(p), n, 'video', v) for p, (v, n) in zip(positions, per_video)]
    return sorted(runs)

  def _truncate(self, ids, assistant, runs, starts, images, videos):
    """Cut at max_length, never through an image or a video (a Qwen3-VL video's frame runs are
    one unit): the cut moves before the first one that does not fit, which is dropped with every
    later one."""
    cfg = self.cfg
    units = {}  # (kind, index) -> [first token, end]
    for (_, count, kind, index), start in zip(runs, starts):
      first, end = units.get((kind, index), (start, start))
      units[(kind, index)] = (min(first, start), max(end, start + count))
    cut = cfg.max_length
    for first, end in sorted(units.values()):
      if end + (1 if cfg.image_end else 0) > cut:
        cut = min(cut, first - (1 if cfg.image_start else 0))
        break
    kept = lambda kind: sum(k == kind and first < cut for (k, _), (first, _) in units.items())
    return ids[:cut], assistant[:cut], images[:kept('image')], videos[:kept('video')]

  # ---- the whole sample ---------------------------------------------------------------------------

  def _with_videos(self, raw: dict, videos: list) -> dict:
    from mmjax.models.qwen_vl_positions import mm_token_types, rope_index  # pylint: disable=g-import-not-at-top

    cfg, sample_id = self.cfg, raw['id']
    self.check_structure(raw)
    placeholders = sum(m['content'].count(VIDEO) for m in raw['messages'])
    if placeholders != len(videos):
      raise SampleError('image_count_mismatch', sample_id,
                        f'{placeholders} {VIDEO} placeholders but {len(videos)} videos')
    if len(videos) > self.video.max_videos:
      raise SampleError('too_many_images', sample_id,
                        f'{len(videos)} videos > data.video.max_videos {self.video.max_videos}')
    processed = self._load(raw, videos)
    texts = iter(self._video_text(p) for p in processed)
    messages = []
    for m in raw['messages']:
      parts = m['content'].split(VIDEO)
      messages.append({'role': m['role'],
                       'content': parts[0] + ''.join(next(texts) + rest for rest in parts[1:])})
    ids, assistant = self.tokenize(messages)
    pil_images = [load_image(ref, sample_id) for ref in raw['images']]
    if int((ids == self.image_id).sum()) != len(pil_images):
      raise SampleError('image_count_mismatch', sample_id,
                        f'{int((ids == self.image_id).sum())} image tokens after templating but '
                        f'{len(pil_images)} images')
    try:
      runs = self._runs(ids, pil_images, processed)
    except SampleError as e:
      raise SampleError(e.reason, sample_id, e.detail) from e

    repeats = np.ones(len(ids), np.int64)
    for position, count, _, _ in runs:
      repeats[position] = count
    ids = np.repeat(ids, repeats)
    media = (ids == self.image_id) | (ids == self.video_id)
    assistant = np.repeat(assistant, repeats) & ~media
    shift = np.concatenate([[0], np.cumsum(repeats - 1)])
    starts = [int(p + shift[p]) for p, _, _, _ in runs]  # first token of each run, expanded

    if len(ids) > cfg.max_length:
      if not cfg.truncate:
        raise SampleError('too_long', sample_id, f'{len(ids)} tokens > max_length {cfg.max_length}')
      ids, assistant, pil_images, processed = self._truncate(ids, assistant, runs, starts,
                                                             pil_images, processed)
    labels, loss_mask = next_token_targets(ids, assistant, sample_id, cfg.max_length)

    images = [self.images(im) for im in pil_images]
    tiles = [self.images.sample_tiles(p) for p in images]
    pixels = np.concatenate(tiles) if tiles else self.images.empty_tiles()
    video_pixels = (np.concatenate([v.patches for v in processed]) if processed
                    else np.zeros((0, self._width), np.float32))
    if len(pixels) > cfg.max_tiles or len(video_pixels) > self.video.max_patches:
      raise SampleError('too_many_images', sample_id,
                        f'{len(pixels)} image patches (max_tiles {cfg.max_tiles}) and '
                        f'{len(video_pixels)} video patches (video.max_patches '
                        f'{self.video.max_patches}) per row')
    image_grids = np.asarray([p.grid_thw for p in images], np.int32).reshape(-1, 3)
    video_grids = np.asarray([v.grid_thw for v in processed], np.int32).reshape(-1, 3)
    example = {
        'input_ids': ids.astype(np.int32),
        'labels': labels,
        'loss_mask': loss_mask,
        'pixel_values': pixels.astype(np.float32, copy=False),
        'image_sizes': np.asarray([p.image_size for p in images], np.int32).reshape(-1, 2),
        'image_tiles': np.asarray([len(t) for t in tiles], np.int32),
        'image_grid_thw': image_grids,
        'pixel_values_videos': video_pixels.astype(np.float32, copy=False),
        'video_grid_thw': video_grids,
    }
    if cfg.mrope:
      ids2 = example['input_ids'][None]
      positions, _ = rope_index(
          ids2, mm_token_types(ids2, self.image_id, self.video_id), kind=self.video.model_type,
          merge_size=cfg.image.merge_size, image_grid_thw=image_grids if len(image_grids) else None,
          video_grid_thw=video_grids if len(video_grids) else None,
          second_per_grid_ts=np.asarray([v.seconds_per_grid for v in processed], np.float32),
          tokens_per_second=self.video.tokens_per_second)
      example['mrope_positions'] = np.ascontiguousarray(positions[:, 0].T)  # [L, 3]
    return example


__all__ = ['MediaSampleProcessor', 'VIDEO', 'IMAGE']

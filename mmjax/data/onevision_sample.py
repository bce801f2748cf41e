"""LLaVA-OneVision samples with videos: `<video>` placeholders whose frames are tiles.

A raw sample may carry `videos` (references `mmjax.data.video.load_frames` reads, sampled as
`data.video` says: `fps`, `min_frames`, `max_frames`; one frame per temporal step) beside its
`images`, one `<video>` placeholder in the text per video. Every sampled frame is resized to the
tile square and normalised as the images' views (LlavaOnevisionVideoProcessor: an exact resize,
no padding), and becomes one tile after the sample's images' tiles: the model runs frames and
views through the same tower. The placeholder becomes `video_tokens(frames, g)` copies of
`data.video.token` (the model's `video_token_id`): every frame pooled 2x2 (rounding up), then one
newline, each token with its four sources and weights as the image tokens
(`onevision_pipeline.token_features`). A video takes one media slot (`image_tiles`: its frames,
`image_sizes`: the frames' original size, `image_is_video` 1), so rows pack and rebase it as
they do images.

Samples without videos go through `SampleProcessor` as before.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmjax.data.media_sample import VIDEO, frames_or_skip
from mmjax.data.preprocess import anyres, common, onevision, onevision_pipeline
from mmjax.data.sample import SampleProcessor, load_image, next_token_targets
from mmjax.data.validation import SampleError


class OnevisionSampleProcessor(SampleProcessor):
  """`SampleProcessor` for the `onevision` image family that also takes videos."""

  def __init__(self, cfg, tokenizer):
    super().__init__(cfg, tokenizer)
    self.video = cfg.video
    try:
      self.video_id = tokenizer.token_to_id(cfg.video.token)
    except KeyError:  # without it the data may hold no videos
      self.video_id = None
    self.side = anyres.tile_side(cfg.image)
    self.g = self.side // cfg.image.patch_size

  def __call__(self, raw: dict) -> dict:
    videos = raw.get('videos') or []
    return self._with_videos(raw, videos) if videos else super().__call__(raw)

  def frames(self, ref, sample_id: str) -> tuple[np.ndarray, tuple[int, int]]:
    """A video's sampled frames as tiles `[F, side, side, 3]` float32 (the images' resampling,
    rescale and normalisation) and the frames' original (height, width)."""
    image = self.cfg.image
    frames, _, _, _ = frames_or_skip(ref, sample_id, self.video, temporal=1)
    return np.stack([common.normalize(common.resize(Image.fromarray(f), self.side, self.side,
                                                    image.resample),
                                      image.mean, image.std, image.rescale_factor)
                     for f in frames]), frames.shape[1:3]

  def _with_videos(self, raw: dict, videos: list) -> dict:
    cfg, sample_id = self.cfg, raw['id']
    self.check_structure(raw)
    if self.video_id is None:
      raise SampleError('bad_record', sample_id, f'{len(videos)} videos, but data.video.token '
                        f'{self.video.token!r} is not in the tokenizer')
    placeholders = sum(m['content'].count(VIDEO) for m in raw['messages'])
    if placeholders != len(videos):
      raise SampleError('image_count_mismatch', sample_id,
                        f'{placeholders} {VIDEO} placeholders but {len(videos)} videos')
    messages = [{'role': m['role'], 'content': m['content'].replace(VIDEO, self.video.token)}
                for m in raw['messages']]
    ids, assistant, image_pos = self.tokens({**raw, 'messages': messages})
    video_pos = np.flatnonzero(ids == self.video_id)
    if len(video_pos) != len(videos):
      raise SampleError('image_count_mismatch', sample_id, f'{len(video_pos)} video tokens after '
                        f'templating but {len(videos)} videos')
    pil_images = [load_image(ref, sample_id) for ref in raw['images']]
    clips, sizes = zip(*[self.frames(ref, sample_id) for ref in videos])
    shared = len(pil_images) > 1  # as LlavaOnevisionProcessor: videos do not count
    runs = sorted([(int(p), self.images.num_tokens(im.height, im.width, shared))
                   for p, im in zip(image_pos, pil_images)] +
                  [(int(p), onevision.video_tokens(len(c), self.g)) for p, c in zip(video_pos, clips)])
    repeats = np.ones(len(ids), np.int64)
    for position, count in runs:
      repeats[position] = count
    ids = np.repeat(ids, repeats)
    is_media = (ids == self.image_id) | (ids == self.video_id)
    assistant = np.repeat(assistant, repeats) & ~is_media
    shift = np.concatenate([[0], np.cumsum(repeats - 1)])
    if len(ids) > cfg.max_length:  # cut before the first run that does not fit, drop the rest
      if not cfg.truncate:
        raise SampleError('too_long', sample_id, f'{len(ids)} tokens > max_length {cfg.max_length}')
      cut = cfg.max_length
      for position, count in runs:
        if position + shift[position] + count > cut:
          cut = min(cut, int(position + shift[position]))
          break
      ids, assistant = ids[:cut], assistant[:cut]
    keep_images = sum(int(p + shift[p]) < len(ids) for p in image_pos)
    keep_videos = sum(int(p + shift[p]) < len(ids) for p in video_pos)
    targets = next_token_targets(ids, assistant, sample_id, cfg.max_length)
    arrays, processed = self.image_arrays(sample_id, pil_images[:keep_images], shared)
    clips, sizes = clips[:keep_videos], sizes[:keep_videos]
    pixels = np.concatenate([arrays['pixel_values'], *clips])
    if len(pixels) > cfg.max_tiles or len(processed) + len(clips) > cfg.max_images:
      raise SampleError('too_many_images', sample_id, f'{len(pixels)} image tiles and video '
                        f'frames (max_tiles {cfg.max_tiles}), {len(processed)} images and '
                        f'{len(clips)} videos (max_images {cfg.max_images}) per row')
    frame_counts = [len(c) for c in clips]
    media = {  # the images' slots, then the videos'
        'pixel_values': pixels.astype(np.float32, copy=False),
        'image_sizes': np.concatenate([arrays['image_sizes'],
                                       np.asarray(sizes, np.int32).reshape(-1, 2)]),
        'image_tiles': np.concatenate([arrays['image_tiles'], np.asarray(frame_counts, np.int32)]),
        'image_is_video': np.concatenate([arrays['image_is_video'],
                                          np.ones(len(clips), np.int32)]),
    }
    return {**self.text_arrays(ids, targets, processed, frame_counts), **arrays, **media}

  def text_arrays(self, ids, targets, processed, frames=()):
    """`SampleProcessor.text_arrays` with the video tokens' sources and weights too (images'
    tokens, then videos', each in text order: the layout's order)."""
    labels, loss_mask = targets
    arrays = {'input_ids': ids.astype(np.int32), 'labels': labels, 'loss_mask': loss_mask}
    videos = ids == (-1 if self.video_id is None else self.video_id)  # [L]
    slots = (ids == self.image_id) | videos  # [L]
    order = np.concatenate([np.flatnonzero(ids == self.image_id), np.flatnonzero(videos)])
    for name, values in onevision_pipeline.token_features(processed, self.cfg.image,
                                                          frames).items():
      if len(values) != int(slots.sum()):
        raise ValueError(f'{name} has {len(values)} rows for {int(slots.sum())} media tokens')
      off = -1 if np.issubdtype(values.dtype, np.integer) else 0
      full = np.full((len(ids), *values.shape[1:]), off, values.dtype)  # [L, ...]
      full[order] = values
      arrays[name] = full
    return arrays

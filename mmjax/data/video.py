"""Videos for Qwen2-VL / Qwen2.5-VL / Qwen3-VL: frames, sampling at a rate, resizing, temporal
patches.

A video is a file (any container / codec FFmpeg reads, through PyAV), encoded bytes of one, a
directory of frame images (in name order), a list of frame images, or a uint8 array
`[frames, H, W, 3]`. Frames are sampled as transformers' `Qwen2VLVideoProcessor.sample_frames`
samples with `fps`: `clamp(frames / video_fps * fps, min_frames, max_frames)`, floored to a
multiple of `temporal_patch_size`, indices `floor(arange(0, total, total / n))`. A directory or
an array has no frame rate of its own: `frames_fps` gives it (default: `fps`, every frame kept).

Every frame is resized to one smart-resized size (`min_pixels` .. `max_pixels`, as images) with
Pillow's bicubic filter and normalised as images are (`mmjax.data.preprocess`, at parity with
`Qwen2VLImageProcessorPil`); frames are padded to a multiple of `temporal_patch_size` by
repeating the last, and `temporal_patch_size` consecutive frames make one temporal patch:
`pixel_values_videos [t * h * w, C * T * P * P]` in transformers' order, `video_grid_thw =
(t, h, w)`. (transformers' video processor resizes with torchvision instead, whose antialiased
bicubic is not Pillow's: where a frame is resized the two differ by a few levels of 255;
frames already at the target size give the same values.)
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any

import numpy as np
from PIL import Image

from mmjax.data.preprocess import common, qwen2_vl

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclasses.dataclass(frozen=True)
class VideoConfig:
  """Video settings of the data pipeline (`data.video`); `max_patches=0` means no videos."""
  fps: float = 2.0  # frames sampled per second of video
  min_frames: int = 4
  max_frames: int = 768
  frames_fps: float | None = None  # frame rate of a directory / array of frames (default: fps)
  min_pixels: int = 128 * 28 * 28  # per frame, as Qwen2VLVideoProcessor's size
  max_pixels: int = 768 * 28 * 28
  token: str = '<|video_pad|>'  # vocabulary token of one video position
  max_patches: int = 0  # qwen2_vl: video patch slots per packed row (0: no videos); onevision's
  # frames take tile slots (`max_tiles`) and media slots (`max_images`) instead
  max_videos: int = 1  # video slots per packed row
  model_type: str = 'qwen2_vl'  # positions / prompt: qwen2_5_vl spaces frames by seconds,
  tokens_per_second: float = 2.0  # (Qwen2.5-VL's vision_config.tokens_per_second)
  # qwen3_vl gives each frame its own '<t seconds>' run

  def __post_init__(self):
    if self.model_type not in VIDEO_KINDS:
      raise ValueError(f'data.video.model_type {self.model_type!r}: expected one of {VIDEO_KINDS}')
    if self.fps <= 0 or self.min_frames < 1 or self.max_frames < self.min_frames:
      raise ValueError(f'data.video: fps > 0 and 1 <= min_frames <= max_frames, got {self}')


class VideoError(ValueError):
  """A video that cannot be read; `missing` says whether it is absent (else undecodable)."""

  def __init__(self, message: str, missing: bool = False):
    super().__init__(message)
    self.missing = missing


def sample_indices(total: int, video_fps: float, cfg: VideoConfig, temporal: int) -> np.ndarray:
  """Frame indices to keep of `total` at `video_fps` (transformers' `sample_frames` with fps)."""
  if total < temporal:  # too short to sample: every frame (patches repeat the last)
    return np.arange(total)
  max_frames = math.floor(min(cfg.max_frames, total) / temporal) * temporal
  n = min(max(total / video_fps * cfg.fps, cfg.min_frames), max_frames, total)
  n = math.floor(n / temporal) * temporal
  step = total / n
  # torch.arange(0, total, step).int(): ceil(total / step) values, float32, truncated
  count = math.ceil(total / step)
  return (np.arange(count, dtype=np.float64) * step).astype(np.float32).astype(np.int64)


def _frame_files(directory: str) -> list[str]:
  files = sorted(f for f in os.listdir(directory) if f.lower().endswith(FRAME_SUFFIXES))
  if not files:
    raise VideoError(f'no frame images ({", ".join(FRAME_SUFFIXES)}) in {directory}')
  return [os.path.join(directory, f) for f in files]


def _decode_file(source, cfg: VideoConfig, temporal: int):
  """PyAV: the sampled frames of a video file / bytes, its frame rate, the indices kept and its
  frame count."""
  import av  # pylint: disable=g-import-not-at-top

  try:
    with av.open(source) as container:
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate
      fps = float(rate) if rate else (cfg.frames_fps or cfg.fps)
      total = stream.frames
      if total <= 0:  # no frame count in the header: count the packets
        total = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
      indices = sample_indices(total, fps, cfg, temporal)
      wanted = {int(i) for i in indices}
      frames: dict[int, np.ndarray] = {}
      for k, frame in enumerate(container.decode(stream)):
        if k in wanted:
          frames[k] = frame.to_ndarray(format='rgb24')
        if k >= indices[-1]:
          break
  except (av.error.FFmpegError, IndexError, OSError) as e:  # IndexError: no video stream
    raise VideoError(f'cannot decode the video: {e}') from e
  if not frames:
    raise VideoError('the video has no frames')
  last = frames[max(frames)]  # a header that promised more frames than decode gives
  return np.stack([frames.get(int(i), last) for i in indices]), fps, indices, total


def load_frames(ref: Any, cfg: VideoConfig, temporal: int):
  """A video reference -> (sampled frames uint8 `[N, H, W, 3]`, its frame rate, the indices
  kept, its frame count)."""
  if isinstance(ref, str):
    if not os.path.exists(ref):
      raise VideoError(f'no video at {ref}', missing=True)
    if not os.path.isdir(ref):
      return _decode_file(ref, cfg, temporal)
    ref = _frame_files(ref)
  if isinstance(ref, (bytes, bytearray, memoryview)):
    return _decode_file(io.BytesIO(bytes(ref)), cfg, temporal)
  fps = cfg.frames_fps or cfg.fps
  total = len(ref)
  indices = sample_indices(total, fps, cfg, temporal)
  if isinstance(ref, np.ndarray):
    if ref.dtype != np.uint8 or ref.ndim != 4 or ref.shape[-1] != 3:
      raise VideoError(f'frames array of dtype {ref.dtype} and shape {ref.shape}; expected uint8 '
                       '[frames, height, width, 3]')
    return ref[indices], fps, indices, total
  frames = []
  for i in indices:
    try:
      frames.append(np.asarray(common.decode_image(ref[int(i)])))
    except (OSError, ValueError, SyntaxError) as e:
      raise VideoError(f'cannot decode frame {int(i)}: {e}') from e
  if len({f.shape for f in frames}) > 1:
    raise VideoError(f'frames of different sizes: {sorted({f.shape for f in frames})}')
  return np.stack(frames), fps, indices, total


def patchify_video(pixels: np.ndarray, patch: int, merge: int, temporal: int) -> np.ndarray:
  """`[N, H, W, C]` (N a multiple of `temporal`) -> `[t * h * w, C * T * P * P]`: per temporal
  patch, merge blocks row-major, each block's patches consecutive, as transformers orders them."""
  n, h, w, c = pixels.shape
  gt, gh, gw, m, p = n // temporal, h // patch, w // patch, merge, patch
  x = pixels.reshape(gt, temporal, gh // m, m, p, gw // m, m, p, c)
  x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)  # [t, gh/m, gw/m, m, m, C, T, P, P]
  return x.reshape(gt * gh * gw, c * temporal * p * p)


@dataclasses.dataclass
class ProcessedVideo:
  patches: np.ndarray  # [t * h * w, C * T * P * P] float32
  grid_thw: tuple[int, int, int]
  timestamps: list[float]  # seconds at the middle of each temporal patch (Qwen3-VL's prompt)
  seconds_per_grid: float  # temporal_patch_size / sampled fps (Qwen2.5-VL's second_per_grid_ts)
  size: tuple[int, int]  # original (height, width)


def process_video(frames: np.ndarray, fps: float, indices: np.ndarray, total: int, image_cfg,
                  cfg: VideoConfig) -> ProcessedVideo:
  """Sampled frames -> temporal patches (see the module docstring)."""
  temporal, patch, merge = image_cfg.temporal_patch_size, image_cfg.patch_size, image_cfg.merge_size
  _, height, width, _ = frames.shape
  h, w = qwen2_vl.smart_resize(height, width, patch * merge, cfg.min_pixels, cfg.max_pixels)
  pixels = np.stack([common.normalize(common.resize(Image.fromarray(f), h, w, image_cfg.resample),
                                      image_cfg.mean, image_cfg.std, image_cfg.rescale_factor)
                     for f in frames])  # [N, h, w, 3]
  indices = [int(i) for i in indices]
  if pad := -len(pixels) % temporal:
    pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
    indices += [indices[-1]] * pad
  seconds = [i / fps for i in indices]  # transformers' Qwen3VLProcessor._calculate_timestamps
  stamps = [(seconds[i] + seconds[i + temporal - 1]) / 2 for i in range(0, len(seconds), temporal)]
  sampled_fps = len(frames) / total * fps  # VideoMetadata.sampled_fps
  return ProcessedVideo(patchify_video(pixels, patch, merge, temporal),
                        (len(pixels) // temporal, h // patch, w // patch), stamps,
                        temporal / sampled_fps, (height, width))

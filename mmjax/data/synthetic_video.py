"""A procedural video set: one coloured shape moving across a dark frame; which way does it go?

    python -m mmjax.data.synthetic_video DIR [--num 256] [--frames-as-images]

writes `DIR/clips/NNNNN.mp4` (MPEG-4 Part 2 through PyAV: an encoder every FFmpeg build has; or
`DIR/clips/NNNNN/` directories of PNG frames), `DIR/train.jsonl` (LLaVA-style records:
`{"video": ..., "conversations": [human "<video>\\nWhich way does the red square move?", gpt
"left"]}`) and `DIR/tokenizer/` (a small BPE tokenizer with the Qwen chat and vision tokens).
`configs/tiny/qwen2_vl_video.py:DIR` trains a tiny Qwen2-VL on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
          "yellow": (235, 220, 40)}
SHAPES = ("square", "circle")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx)
QUESTION = "Which way does the {color} {shape} move?"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def render_clip(rng: np.random.Generator, size: int = 32, frames: int = 8):
  """uint8 frames `[frames, size, size, 3]`, the question and its one-word answer."""
  color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
  direction = rng.choice(list(DIRECTIONS))
  dy, dx = DIRECTIONS[direction]
  half = size // 8
  travel = size - 4 * half  # the centre crosses most of the frame
  start = np.array([rng.integers(2 * half, size - 2 * half) for _ in range(2)], float)
  start[0] = size - 2 * half if dy < 0 else 2 * half if dy > 0 else start[0]
  start[1] = size - 2 * half if dx < 0 else 2 * half if dx > 0 else start[1]
  yy, xx = np.mgrid[:size, :size]
  clip = np.full((frames, size, size, 3), 20, np.uint8)
  for f in range(frames):
    cy, cx = start + np.array([dy, dx]) * travel * f / max(frames - 1, 1)
    if shape == "square":
      inside = (abs(yy - cy) <= half) & (abs(xx - cx) <= half)
    else:
      inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (half + 0.5) ** 2
    clip[f][inside] = COLORS[color]
  return clip, QUESTION.format(color=color, shape=shape), direction


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
  import av  # pylint: disable=g-import-not-at-top

  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.options = {"qscale": "2"}  # near-lossless: colours survive the encoding
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def write_video_dataset(out: str, num: int = 256, *, size: int = 32, frames: int = 8,
                        fps: int = 4, as_images: bool = False, seed: int = 0) -> str:
  """Writes the set (see the module docstring); returns the path of `train.jsonl`."""
  from mmjax.data.tokenizer import train_tiny_tokenizer  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(out, "clips"), exist_ok=True)
  records, texts = [], []
  for i in range(num):
    clip, question, answer = render_clip(rng, size, frames)
    name = os.path.join("clips", f"{i:05d}" + ("" if as_images else ".mp4"))
    if as_images:
      os.makedirs(os.path.join(out, name), exist_ok=True)
      for f, frame in enumerate(clip):
        Image.fromarray(frame).save(os.path.join(out, name, f"{f:03d}.png"))
    else:
      write_mp4(os.path.join(out, name), clip, fps)
    records.append({"id": f"v{i}", "video": name, "conversations": [
        {"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": answer}]})
    texts.append(f"{question} {answer}")
  path = os.path.join(out, "train.jsonl")
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  corpus = texts + ["system You are a helpful assistant. user assistant"] * 20
  tok_dir = os.path.join(out, "tokenizer")
  os.makedirs(tok_dir, exist_ok=True)
  train_tiny_tokenizer(corpus, special_tokens=SPECIAL_TOKENS, vocab_size=320).save(
      os.path.join(tok_dir, "tokenizer.json"))
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmjax.data.synthetic_video",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("out", help="output directory")
  parser.add_argument("--num", type=int, default=256, help="clips (default: %(default)s)")
  parser.add_argument("--frames", type=int, default=8, help="frames per clip (default: 8)")
  parser.add_argument("--fps", type=int, default=4, help="frame rate of the clips (default: 4)")
  parser.add_argument("--frames-as-images", action="store_true",
                      help="directories of PNG frames instead of .mp4 files")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  path = write_video_dataset(args.out, args.num, frames=args.frames, fps=args.fps,
                             as_images=args.frames_as_images, seed=args.seed)
  print(f"wrote {args.num} clips and {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

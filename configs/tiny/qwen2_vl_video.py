"""The tiny Qwen2-VL of `qwen2_vl.py` trained on videos: the procedural moving-shapes set.

    python -m mmjax.data.synthetic_video /tmp/videos
    mmjax train --config configs/tiny/qwen2_vl_video.py:/tmp/videos --workdir /tmp/tiny_video

`ARG` is the set's directory (what `mmjax.data.synthetic_video` writes: `train.jsonl`, `clips/`,
`tokenizer/`), optionally followed by `,qwen2_5_vl` or `,qwen3_vl` for those variants. Each
8-frame, 4 fps clip is sampled at 2 fps (4 frames, 2 temporal patches of 4x4 patches: 8 video
tokens); the model learns which way the shape moves.
"""

import os

import ml_collections

from qwen2_vl import get_config as tiny_qwen_vl  # a sibling config (mmjax train puts it on the path)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  directory, _, kind = (arg or "").partition(",")
  kind = kind or "qwen2_vl"
  c = tiny_qwen_vl(kind)
  c.model.vision.tokens_per_second = c.model.vision.get("tokens_per_second", 2.0)
  if directory:
    from mmjax.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(os.path.join(directory, "tokenizer"))
    c.model.image_token_id = tokenizer.token_to_id("<|image_pad|>")
    c.model.video_token_id = tokenizer.token_to_id("<|video_pad|>")
  c.data.update(
      tokenizer=os.path.join(directory, "tokenizer") if directory else "",
      sources=[dict(path=os.path.join(directory, "train.jsonl"), image_root=directory)]
      if directory else [],
      max_length=96 if kind == "qwen3_vl" else 64,  # Qwen3-VL: '<t seconds>' text per frame
      batch_size=8, max_tiles=4, max_images=1,
      video=dict(fps=2.0, min_frames=4, max_frames=16, min_pixels=32 * 32, max_pixels=64 * 64,
                 max_patches=64, max_videos=2, model_type=kind,
                 tokens_per_second=c.model.vision.tokens_per_second))
  c.train.update(steps=150, log_every=10)
  return c

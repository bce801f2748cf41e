"""Tiny LLaVA-OneVision models and LlavaOnevisionProcessor-like inputs (real AnyRes tiles of
random images from LlavaOnevisionImageProcessorPil, `<image>` / `<video>` expanded as the
processor counts them) for tests."""

import numpy as np
import torch
import transformers
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil)
from transformers.models.llava_onevision.processing_llava_onevision import (
    LlavaOnevisionProcessor)

from hf_models import left_padded, save, siglip_vision_config, text_config
from llava_next_models import random_images

IMAGE, VIDEO = 127, 126  # the image and video tokens in the tiny vocab of 128
TINY_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]


def onevision_config(vision=None, text=None, **kw):
  text = text or text_config("qwen2")
  kw.setdefault("image_token_index", IMAGE)
  kw.setdefault("video_token_index", VIDEO)
  kw.setdefault("image_grid_pinpoints", TINY_PINPOINTS)
  kw.setdefault("tie_word_embeddings", text.tie_word_embeddings)
  return transformers.LlavaOnevisionConfig(vision_config=vision or siglip_vision_config(),
                                           text_config=text, **kw)


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  return save(transformers.LlavaOnevisionForConditionalGeneration(hf_cfg), path, seed=seed)


def load_reference(hf_dir: str):
  return transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


def image_processor(hf_cfg) -> LlavaOnevisionImageProcessorPil:
  side = hf_cfg.vision_config.image_size
  return LlavaOnevisionImageProcessorPil(size={"height": side, "width": side},
                                         image_grid_pinpoints=hf_cfg.image_grid_pinpoints)


def counting_processor(image_proc, num_image_tokens: int, strategy: str,
                       vision_aspect_ratio: str = "anyres_max_9") -> LlavaOnevisionProcessor:
  """A LlavaOnevisionProcessor that counts placeholders (`replace_image_token`,
  `replace_video_token`) without a tokenizer."""
  processor = object.__new__(LlavaOnevisionProcessor)
  processor.image_processor = image_proc
  processor.num_image_tokens = num_image_tokens
  processor.vision_feature_select_strategy = strategy
  processor.vision_aspect_ratio = vision_aspect_ratio
  processor.image_token, processor.video_token = "<image>", "<video>"
  return processor


def hf_counter(hf_cfg) -> LlavaOnevisionProcessor:
  v = hf_cfg.vision_config
  n = (v.image_size // v.patch_size) ** 2 + int(v.model_type == "clip_vision_model")
  return counting_processor(image_processor(hf_cfg), n, hf_cfg.vision_feature_select_strategy,
                            hf_cfg.vision_aspect_ratio)


def make_inputs(hf_cfg, rows, videos=None, seed: int = 0) -> dict[str, np.ndarray]:
  """Left-padded rows of different lengths; `rows[r]` lists row r's image sizes (h, w) (a row
  of several images takes them without AnyRes, as the processor's nested images do); `videos[r]`
  (optional) puts a video of that many frames after row r's images.

  Returns LlavaOnevisionProcessor's arrays (`pixel_values [I, P, C, H, W]`, `image_sizes [I, 2]`,
  `batch_num_images`, `pixel_values_videos [V, F, C, H, W]`)."""
  rng = np.random.default_rng(seed)
  vocab = hf_cfg.text_config.vocab_size
  nested = [row for row in rows if row]
  inputs = {}
  if nested:
    images = random_images([s for row in nested for s in row], seed)
    grouped, k = [], 0
    for row in nested:
      grouped.append(images[k:k + len(row)])
      k += len(row)
    out = image_processor(hf_cfg)(images=grouped, return_tensors="np")
    inputs.update(pixel_values=out["pixel_values"].astype(np.float32),
                  image_sizes=out["image_sizes"], batch_num_images=out["batch_num_images"])
  counter = hf_counter(hf_cfg)
  frames = [f for f in (videos or []) if f]
  if frames:
    v = hf_cfg.vision_config
    inputs["pixel_values_videos"] = rng.normal(
        size=(len(frames), frames[0], 3, v.image_size, v.image_size)).astype(np.float32)
  seqs, image_idx, video_idx = [], 0, 0
  for r, row_sizes in enumerate(rows):
    seq = [1] + list(rng.integers(3, vocab - 2, 2 + 2 * r))
    for _ in row_sizes:
      n = len(counter.replace_image_token(inputs, image_idx)) // len(counter.image_token)
      seq += [IMAGE] * n + list(rng.integers(3, vocab - 2, 2))
      image_idx += 1
    if videos and videos[r]:
      n = len(counter.replace_video_token(inputs, video_idx)) // len(counter.video_token)
      seq += [VIDEO] * n + list(rng.integers(3, vocab - 2, 2))
      video_idx += 1
    seqs.append(seq)
  ids, mask = left_padded(seqs)
  return {"input_ids": ids, "attention_mask": mask, **inputs}

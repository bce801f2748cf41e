"""Tiny LLaVA-NeXT models and LlavaNextProcessor-like inputs (real AnyRes tiles of random images,
`<image>` expanded as the processor counts) for tests."""

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil)
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from hf_models import clip_vision_config, left_padded, save, text_config

IMAGE = 127  # the image token in the tiny vocab of 128
TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]


def llava_next_config(vision=None, text=None, **kw):
  text = text or text_config()
  kw.setdefault("image_token_index", IMAGE)
  kw.setdefault("image_grid_pinpoints", TINY_PINPOINTS)
  kw.setdefault("tie_word_embeddings", text.tie_word_embeddings)
  return transformers.LlavaNextConfig(vision_config=vision or clip_vision_config(),
                                      text_config=text, **kw)


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  return save(transformers.LlavaNextForConditionalGeneration(hf_cfg), path, seed=seed)


def load_reference(hf_dir: str):
  return transformers.LlavaNextForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


def image_processor(hf_cfg) -> LlavaNextImageProcessorPil:
  side = hf_cfg.vision_config.image_size
  return LlavaNextImageProcessorPil(size={"shortest_edge": side},
                                    crop_size={"height": side, "width": side},
                                    image_grid_pinpoints=hf_cfg.image_grid_pinpoints)


def tokens_per_image(hf_cfg, height: int, width: int) -> int:
  """`LlavaNextProcessor.replace_image_token`'s count of `<image>` tokens (no tokenizer needed)."""
  processor = object.__new__(LlavaNextProcessor)
  processor.image_processor = image_processor(hf_cfg)
  v = hf_cfg.vision_config
  processor.patch_size = v.patch_size
  processor.num_additional_image_tokens = int(v.model_type == "clip_vision_model")
  side = v.image_size
  n = processor._get_number_of_features(height, width, side, side)
  return n - 1 if hf_cfg.vision_feature_select_strategy == "default" else n


def random_images(sizes, seed: int = 0) -> list[Image.Image]:
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def make_inputs(hf_cfg, rows, seed: int = 0) -> dict[str, np.ndarray]:
  """Left-padded rows of different lengths; `rows` lists each row's image sizes (h, w).
  Returns LlavaNextProcessor's arrays (`pixel_values [I, P, C, H, W]`, `image_sizes [I, 2]`)."""
  rng = np.random.default_rng(seed)
  vocab = hf_cfg.text_config.vocab_size
  seqs, sizes = [], []
  for r, row_sizes in enumerate(rows):
    seq = [1] + list(rng.integers(3, vocab - 1, 2 + 2 * r))
    for h, w in row_sizes:
      seq += [IMAGE] * tokens_per_image(hf_cfg, h, w) + list(rng.integers(3, vocab - 1, 2))
      sizes.append((h, w))
    seqs.append(seq)
  ids, mask = left_padded(seqs)
  inputs = {"input_ids": ids, "attention_mask": mask}
  if sizes:
    out = image_processor(hf_cfg)(images=random_images(sizes, seed), return_tensors="np")
    inputs.update(pixel_values=out["pixel_values"].astype(np.float32),
                  image_sizes=out["image_sizes"])
  return inputs


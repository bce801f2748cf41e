"""The ~125M-parameter LLaVA-shaped model the benchmarks share (CLIP ViT 224/14 + 10-layer Llama).

Built randomly with transformers, saved, and converted with `convert_hf`, so both sides of a
benchmark start from the same weights.
"""

import os

import numpy as np


def build_llava_100m(workdir: str, seed: int = 0):
  """Returns `(hf_dir, mm_dir, hf_config)` under `workdir`; a finished earlier build there is
  reused (the benchmarks' `--workdir`), so a rerun skips building and converting."""
  import torch
  import transformers

  from mmjax.checkpoint import METADATA_FILE
  from mmjax.convert.importer import convert_hf

  hf_dir, mm_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "mm")
  if os.path.exists(os.path.join(mm_dir, METADATA_FILE)):
    return hf_dir, mm_dir, transformers.LlavaConfig.from_pretrained(hf_dir)
  torch.manual_seed(seed)
  vision = transformers.CLIPVisionConfig(hidden_size=384, intermediate_size=1536,
                                         num_hidden_layers=6, num_attention_heads=6,
                                         image_size=224, patch_size=14)
  text = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                                  num_hidden_layers=10, num_attention_heads=12,
                                  num_key_value_heads=4, max_position_embeddings=2048)
  cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=31999)
  model = transformers.LlavaForConditionalGeneration(cfg)
  model.save_pretrained(hf_dir)
  convert_hf(hf_dir, mm_dir, progress=False)
  return hf_dir, mm_dir, cfg


def image_tokens(cfg) -> int:
  return (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2


def random_pixels(batch: int, cfg, seed: int = 0) -> np.ndarray:
  """`[B, 3, H, W]` float32 (NCHW, as transformers takes them)."""
  size = cfg.vision_config.image_size
  return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)

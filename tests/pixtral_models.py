"""Tiny Pixtral (`llava` with a `pixtral` tower) and Mistral3 models, and PixtralProcessor-like
inputs (random images through PixtralImageProcessorPil, `[IMG]` rows as the processor lays them
out) for tests."""

import importlib
import sys
import types

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from hf_models import left_padded, save, text_config

IMAGE, BREAK, END = 125, 126, 127  # [IMG], [IMG_BREAK], [IMG_END] in the tiny vocab of 128
LONGEST_EDGE = 48  # the tiny processors' longest side


def pixtral_processor_class():
  """transformers' `PixtralProcessor`. Its module imports torchvision (for the torchvision image
  processor, which the tests do not use: they compare with `PixtralImageProcessorPil`), and the
  test extra leaves torchvision out (its PyPI wheels are CUDA builds). Without it, stand-in
  modules let the import run and are removed again, so nothing else sees them."""
  name = "transformers.models.pixtral.processing_pixtral"
  if name in sys.modules or importlib.util.find_spec("torchvision") is not None:
    return importlib.import_module(name).PixtralProcessor
  stubs = ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
           "torchvision.transforms.v2.functional")
  for stub in stubs:
    sys.modules[stub] = types.ModuleType(stub)
  try:
    return importlib.import_module(name).PixtralProcessor
  finally:
    for stub in stubs:
      del sys.modules[stub]


def pixtral_vision_config(**kw):
  base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
              patch_size=4, image_size=LONGEST_EDGE)
  return transformers.PixtralVisionConfig(**{**base, **kw})


def pixtral_config(vision=None, text=None, **kw):
  """A `llava` config with a Pixtral tower, as Pixtral-12B's (every patch, the last layer)."""
  text = text or text_config("mistral")
  kw.setdefault("image_token_id", IMAGE)
  kw.setdefault("vision_feature_select_strategy", "full")
  kw.setdefault("vision_feature_layer", -1)
  kw.setdefault("multimodal_projector_bias", False)
  kw.setdefault("tie_word_embeddings", text.tie_word_embeddings)
  return transformers.LlavaConfig(vision_config=vision or pixtral_vision_config(),
                                  text_config=text, **kw)


def mistral3_config(vision=None, text=None, **kw):
  text = text or text_config("mistral")
  kw.setdefault("image_token_index", IMAGE)
  kw.setdefault("tie_word_embeddings", text.tie_word_embeddings)
  return transformers.Mistral3Config(vision_config=vision or pixtral_vision_config(),
                                     text_config=text, **kw)


def model_class(hf_cfg):
  if hf_cfg.model_type == "mistral3":
    return transformers.Mistral3ForConditionalGeneration
  return transformers.LlavaForConditionalGeneration


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  return save(model_class(hf_cfg)(hf_cfg), path, seed=seed)


def load_reference(hf_dir: str, hf_cfg):
  return model_class(hf_cfg).from_pretrained(hf_dir, attn_implementation="eager").eval()


def merge_size(hf_cfg) -> int:
  return getattr(hf_cfg, "spatial_merge_size", 1)


def image_processor(hf_cfg) -> PixtralImageProcessorPil:
  """PixtralProcessor hands its image processor `patch_size * spatial_merge_size`."""
  side = hf_cfg.vision_config.patch_size * merge_size(hf_cfg)
  return PixtralImageProcessorPil(size={"longest_edge": LONGEST_EDGE},
                                  patch_size={"height": side, "width": side})


def image_tokens(hf_cfg, height: int, width: int) -> list[int]:
  """`PixtralProcessor.replace_image_token`'s ids for a resized image of (height, width)."""
  side = hf_cfg.vision_config.patch_size * merge_size(hf_cfg)
  rows = ([IMAGE] * (width // side) + [BREAK]) * (height // side)
  return rows[:-1] + [END]


def random_images(sizes, seed: int = 0) -> list[Image.Image]:
  rng = np.random.default_rng(seed)
  return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def make_inputs(hf_cfg, rows, seed: int = 0) -> dict[str, np.ndarray]:
  """Left-padded rows of different lengths; `rows` lists each row's original image sizes (h, w).
  Returns PixtralProcessor's arrays (`pixel_values [I, C, H, W]` padded to the largest,
  `image_sizes [I, 2]` resized)."""
  rng = np.random.default_rng(seed)
  images = random_images([s for row in rows for s in row], seed)
  out = image_processor(hf_cfg)(images=images, return_tensors="np") if images else None
  seqs, i = [], 0
  for r, row_sizes in enumerate(rows):
    seq = [1] + list(rng.integers(3, IMAGE, 2 + 2 * r))
    for _ in row_sizes:
      seq += image_tokens(hf_cfg, *out["image_sizes"][i]) + list(rng.integers(3, IMAGE, 2))
      i += 1
    seqs.append(seq)
  ids, mask = left_padded(seqs)
  inputs = {"input_ids": ids, "attention_mask": mask}
  if out is not None:
    inputs.update(pixel_values=out["pixel_values"].astype(np.float32),
                  image_sizes=np.asarray(out["image_sizes"], np.int64))
  return inputs


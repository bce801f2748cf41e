"""Tiny random Llama 3.2 Vision (`mllama`) models and processor-style inputs for parity tests."""

import numpy as np
import torch
import transformers
from transformers.models.mllama import processing_mllama

from hf_models import left_padded

PAD = 0
IMAGE = 128  # the image token: the first of the 8 embedding rows past the vocabulary
VOCAB = 128


def mllama_config(cross_layers=(1, 3), text_layers=5, max_tiles=4, intermediate=(0, 1),
                  global_layers=1, image_size=28, rope=None, **text_kw):
  """A tiny MllamaConfig: 2 local + `global_layers` global vision layers of width 32 over 14 px
  patches (5 tokens per tile, padded to 8), a 64-wide text model with GQA."""
  aspect = {4: None, 2: [[1, 1], [1, 2], [2, 1]], 1: [[1, 1]]}[max_tiles]
  vision = transformers.MllamaVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=global_layers,
      attention_heads=4, image_size=image_size, patch_size=14, max_num_tiles=max_tiles,
      intermediate_layers_indices=list(intermediate), supported_aspect_ratios=aspect,
      vision_output_dim=32 * (1 + len(intermediate)))
  text = transformers.MllamaTextConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=text_layers,
      num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=list(cross_layers),
      pad_token_id=PAD, bos_token_id=1, eos_token_id=2, max_position_embeddings=256,
      rope_parameters=rope or {"rope_type": "default", "rope_theta": 500000.0}, **text_kw)
  return transformers.MllamaConfig(vision_config=vision, text_config=text,
                                   image_token_index=IMAGE)


def build(hf_cfg, seed=0):
  torch.manual_seed(seed)
  return transformers.MllamaForConditionalGeneration(hf_cfg)


def supported(hf_cfg):
  return [tuple(r) for r in hf_cfg.vision_config.supported_aspect_ratios]


def make_inputs(hf_cfg, rows, seed=0):
  """Left-padded processor arrays for `rows`: lists of text-token counts (int) and images (a
  tuple `(tile rows, tile cols)`), e.g. `[[2, (1, 2), 3], [4]]`; each image is one image token.
  `cross_attention_mask` comes from transformers' own processing functions."""
  rng = np.random.default_rng(seed)
  v = hf_cfg.vision_config
  t = v.max_num_tiles
  ids_rows, images_rows = [], []
  for row in rows:
    ids, images = [1], []
    for item in row:
      if isinstance(item, tuple):
        ids.append(IMAGE)
        images.append(item)
      else:
        ids += list(rng.integers(3, VOCAB, item))
    ids_rows.append(ids)
    images_rows.append(images)
  input_ids, attention_mask = left_padded(ids_rows, PAD)
  out = {"input_ids": input_ids, "attention_mask": attention_mask,
         "position_ids": np.where(attention_mask == 1, np.cumsum(attention_mask, 1) - 1, 1)}
  images = max(len(r) for r in images_rows)
  if not images:
    return out
  pixels = np.zeros((len(rows), images, t, 3, v.image_size, v.image_size), np.float32)
  ratio_ids = np.zeros((len(rows), images), np.int64)
  ratio_mask = np.zeros((len(rows), images, t), np.int64)
  ratio_mask[:, :, 0] = 1
  tiles = []
  for b, row in enumerate(images_rows):
    tiles.append([r * c for r, c in row])
    for i, (r, c) in enumerate(row):
      n = r * c
      pixels[b, i, :n] = rng.normal(size=(n, 3, v.image_size, v.image_size))
      ratio_ids[b, i] = supported(hf_cfg).index((r, c)) + 1
      ratio_mask[b, i, :n] = 1
  spans = [processing_mllama.get_cross_attention_token_mask(list(ids), IMAGE)
           for ids in input_ids]
  cross = processing_mllama.convert_sparse_cross_attention_mask_to_dense(
      spans, tiles, max_num_tiles=t, length=input_ids.shape[1])
  out.update(pixel_values=pixels, aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask,
             cross_attention_mask=cross)
  return out


def reference_logits(model, inputs) -> np.ndarray:
  with torch.no_grad():
    out = model(**{k: torch.tensor(v) for k, v in inputs.items()})
  return out.logits.float().numpy()

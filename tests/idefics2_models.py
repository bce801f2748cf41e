"""Tiny random Idefics2 models and Idefics2Processor-style inputs for tests.

Images go through transformers' own `Idefics2ImageProcessorPil` (resized to a longest side of
the tower's `image_size`, padded bottom-right to the batch's largest, rows with fewer images
filled with all-zero ones, and the pixel mask); the prompt lays each image out as the processor
does, `<fake_token_around_image>` + `<image>` x latents + `<fake_token_around_image>`.
"""

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

from hf_models import left_padded, save

VOCAB = 64
FAKE, IMAGE = VOCAB - 2, VOCAB - 1  # <fake_token_around_image>, <image>
PAD, BOS = 0, 1


def idefics2_config(image_size=32, patch=8, depth=2, heads=4, kv_heads=2, head_dim=8, latents=3,
                    tied=False, text_type="mistral", vision_act="gelu_pytorch_tanh"):
  """A 32-wide text model (2 layers), a 24-wide two-layer SigLIP over images of at most
  `image_size` pixels, a perceiver of `depth` layers."""
  vision = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                image_size=image_size, patch_size=patch, hidden_act=vision_act)
  text = dict(model_type=text_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, rms_norm_eps=1e-5, pad_token_id=PAD)
  perceiver = dict(hidden_size=32, rms_norm_eps=1e-5, resampler_n_latents=latents,
                   resampler_depth=depth, resampler_n_heads=heads, resampler_head_dim=head_dim,
                   num_key_value_heads=kv_heads)
  return transformers.Idefics2Config(vision_config=vision, text_config=text,
                                     perceiver_config=perceiver, image_token_id=IMAGE,
                                     tie_word_embeddings=tied)


def build(hf_cfg, seed: int = 0):
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  return transformers.Idefics2ForConditionalGeneration(hf_cfg)


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  return save(build(hf_cfg, seed), path, seed=seed)


def load_reference(hf_dir: str):
  return transformers.Idefics2ForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


def make_inputs(hf_cfg, rows, seed: int = 0) -> dict[str, np.ndarray]:
  """Idefics2Processor's arrays for `rows`: each a list of original image sizes (h, w), the
  images between random text; rows are left-padded."""
  rng = np.random.default_rng(seed)
  side = hf_cfg.vision_config.image_size
  processor = Idefics2ImageProcessorPil(size={"shortest_edge": 4, "longest_edge": side},
                                        do_image_splitting=False)
  images = [[Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in row]
            for row in rows]
  latents = hf_cfg.perceiver_config.resampler_n_latents
  seqs = []
  for r, row in enumerate(rows):
    seq = [BOS] + list(rng.integers(3, FAKE, 1 + r))
    for _ in row:
      seq += [FAKE] + [IMAGE] * latents + [FAKE] + list(rng.integers(3, FAKE, 2))
    seqs.append(seq)
  ids, mask = left_padded(seqs, PAD)
  inputs = {"input_ids": ids, "attention_mask": mask}
  if any(rows):
    out = processor(images=images, return_tensors="np")
    inputs.update(pixel_values=out["pixel_values"].astype(np.float32),
                  pixel_attention_mask=out["pixel_attention_mask"])
  return inputs


def hf_greedy(model, inputs, n: int) -> np.ndarray:
  """transformers' `n` greedy ids after the prompt (no stop token)."""
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, do_sample=False,
                         max_new_tokens=n, pad_token_id=PAD)
  return out[:, inputs["input_ids"].shape[1]:].numpy()

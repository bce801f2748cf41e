"""Tiny random IDEFICS (v1) models and IdeficsProcessor-style inputs for tests.

The vocabulary has 64 base tokens and 2 additional ones, `<fake_token_around_image>` and
`<image>`, as the real checkpoints add them; `image_attention_mask` comes from transformers' own
processing functions over the (left-padded) ids.
"""

import numpy as np
import torch
import transformers
from transformers.models.idefics import processing_idefics

from hf_models import left_padded, save

VOCAB = 64
FAKE, IMAGE = VOCAB, VOCAB + 1  # the additional vocabulary's rows
PAD, BOS, EOS = 0, 1, 2


def idefics_config(layers=4, interval=2, resampler=False, gate="float", qk_norm=False,
                   perceiver_qk_norm=False, tied=False, act="gelu", latents=3, vocab=VOCAB):
  """A tiny IdeficsConfig: a 32-wide text model, a 24-wide vision tower over 16 px images of
  8 px patches (5 tokens an image)."""
  vision = dict(embed_dim=24, image_size=16, patch_size=8, intermediate_size=40,
                num_hidden_layers=2, num_attention_heads=4, hidden_act=act)
  perceiver = dict(use_resampler=resampler, resampler_n_latents=latents, resampler_depth=2,
                   resampler_n_heads=2, resampler_head_dim=8,
                   qk_layer_norms_perceiver=perceiver_qk_norm)
  return transformers.IdeficsConfig(
      vocab_size=vocab, additional_vocab_size=2, hidden_size=32, intermediate_size=48,
      num_hidden_layers=layers, num_attention_heads=4, cross_layer_interval=interval,
      use_resampler=resampler, alpha_type=gate, qk_layer_norms=qk_norm,
      tie_word_embeddings=tied,
      max_position_embeddings=128, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
      vision_config=vision, perceiver_config=perceiver)


def build(hf_cfg, seed: int = 0):
  """A random model whose gates are open (drawn from N(0, 0.8)), so that the images count.
  (transformers' own `alpha_initializer="normal"` fails for float gates.)"""
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  model = transformers.IdeficsForVisionText2Text(hf_cfg)
  with torch.no_grad():
    for layer in model.model.gated_cross_attn_layers:
      for alpha in (layer.alpha_cross_attn, layer.alpha_dense):
        alpha.normal_(0.0, 0.8)
  return model


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  return save(build(hf_cfg, seed), path, seed=seed)


def load_reference(hf_dir: str):
  return transformers.IdeficsForVisionText2Text.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


class _Tokenizer:
  """What `image_attention_mask_for_packed_input_ids` asks of a tokenizer."""

  eos_token_id = EOS

  def convert_tokens_to_ids(self, token):
    assert token == processing_idefics.IMAGE_TOKEN
    return IMAGE


def make_inputs(hf_cfg, rows, seed: int = 0) -> dict[str, np.ndarray]:
  """IdeficsProcessor's arrays for `rows`: lists of text-token counts (int), images ('img',
  written `<fake><image><fake>`) and end-of-sequence tokens ('eos'), e.g. `[[2, 'img', 3]]`;
  rows are left-padded, rows with fewer images than the batch get all-zero padding images (a
  batch without images one zero image per row, as the processor makes them)."""
  rng = np.random.default_rng(seed)
  seqs, counts = [], []
  for row in rows:
    seq = [BOS]
    for item in row:
      if item == "img":
        seq += [FAKE, IMAGE, FAKE]
      elif item == "eos":
        seq.append(EOS)
      else:
        seq += list(rng.integers(3, VOCAB, item))
    seqs.append(seq)
    counts.append(row.count("img"))
  ids, mask = left_padded(seqs, PAD)
  n = max(1, max(counts))
  v = hf_cfg.vision_config
  pixels = np.zeros((len(rows), n, 3, v.image_size, v.image_size), np.float32)
  for b, count in enumerate(counts):
    pixels[b, :count] = rng.normal(size=(count, 3, v.image_size, v.image_size))
  if any(counts):
    incremental, _ = processing_idefics.image_attention_mask_for_packed_input_ids(
        torch.tensor(ids), _Tokenizer(), "pt")
    sees = processing_idefics.incremental_to_binary_attention_mask(
        incremental, "pt", num_classes=n).numpy().astype(bool)
  else:
    sees = np.zeros((*ids.shape, 1), bool)
  return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
          "image_attention_mask": sees}


def torch_inputs(inputs: dict) -> dict:
  return {k: torch.tensor(v) for k, v in inputs.items()}


def reference_logits(model, inputs: dict) -> np.ndarray:
  with torch.no_grad():
    return model(**torch_inputs(inputs)).logits.float().numpy()

"""Tiny Fuyu models and FuyuProcessor-like inputs for tests: per row, one image laid out as the
processor does (`|SPEAKER|` x columns + `|NEWLINE|` per patch row, then `<s>`, the prompt and
`<boa>`), left padded, and the patches `[P, patch_size^2 * channels]` of every image in row
order."""

import numpy as np
import torch
import transformers

from hf_models import left_padded, save, text_config

SPEAKER, NEWLINE, BOS, BOA = 100, 101, 1, 4  # in the tiny vocab of 128
PATCH = 2  # pixels per patch side: 12 values per patch with 3 channels


def fuyu_config(text=None, **kw):
  text = text or text_config("persimmon")
  kw.setdefault("image_token_id", SPEAKER)
  kw.setdefault("patch_size", PATCH)
  kw.setdefault("tie_word_embeddings", text.tie_word_embeddings)
  return transformers.FuyuConfig(text_config=text.to_dict(), **kw)


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  return save(transformers.FuyuForCausalLM(hf_cfg), path, seed=seed)


def load_reference(hf_dir: str):
  return transformers.FuyuForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()


def make_inputs(hf_cfg, grids, seed: int = 0, prompt: int = 4) -> dict:
  """`grids`: per row, the image's (patch rows, patch columns), or None for a text-only row ->
  `input_ids`, `attention_mask` and `image_patches` as FuyuProcessor lays them out."""
  rng = np.random.default_rng(seed)
  features = hf_cfg.patch_size ** 2 * hf_cfg.num_channels
  rows, patches = [], []
  for r, grid in enumerate(grids):
    ids = []
    if grid is not None:
      h, w = grid
      ids = ([SPEAKER] * w + [NEWLINE]) * h
      patches.append(rng.uniform(-1, 1, (h * w, features)).astype(np.float32))
    text = rng.integers(5, SPEAKER, prompt + r).tolist()  # rows of different lengths
    rows.append(ids + [BOS] + text + [BOA])
  input_ids, mask = left_padded(rows)
  out = {"input_ids": input_ids, "attention_mask": mask}
  if patches:
    out["image_patches"] = np.concatenate(patches)
  return out


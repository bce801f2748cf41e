"""Tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL models and processor-like inputs for parity tests."""

import numpy as np
import torch
import transformers

IMAGE, VIDEO, START, END = 120, 121, 122, 123  # token ids (vocab 128)
CLASSES = {
    "qwen2_vl": (transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration),
}


def qwen_vl_config(kind: str, tied: bool = False, vision=None, text=None, mrope=None):
  """Tiny config: 4x4 patches, 2x2 merge, 2-frame temporal patches, a 2-layer text model."""
  text_kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 rms_norm_eps=1e-6, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
  if kind == "qwen3_vl":
    text_kw["head_dim"] = 16
    rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=mrope or [4, 2, 2],
                mrope_interleaved=True)
  else:
    rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=mrope or [2, 3, 3])
  text_kw.update(rope_parameters=rope, **(text or {}))
  vision_kw = dict(depth=3, num_heads=4, patch_size=4, temporal_patch_size=2, spatial_merge_size=2)
  if kind == "qwen2_vl":
    vision_kw.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
  elif kind == "qwen2_5_vl":
    vision_kw.update(hidden_size=32, intermediate_size=48, out_hidden_size=64, window_size=16,
                     fullatt_block_indexes=[1], tokens_per_second=4)
  else:
    vision_kw.update(hidden_size=32, intermediate_size=48, out_hidden_size=64,
                     num_position_embeddings=16, deepstack_visual_indexes=[0, 2])
  vision_kw.update(vision or {})
  config_cls, _ = CLASSES[kind]
  return config_cls(text_config=text_kw, vision_config=vision_kw, image_token_id=IMAGE,
                    video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
                    tie_word_embeddings=tied)


def build(kind: str, hf_cfg) -> torch.nn.Module:
  return CLASSES[kind][1](hf_cfg)


def make_inputs(kind: str, hf_cfg, rows, seed: int = 0) -> dict[str, np.ndarray]:
  """Left-padded rows of text and `('image' | 'video', (t, h, w))` items, as a processor makes.

  Each item is wrapped in vision start / end tokens; Qwen3-VL videos put timestamp text before
  every frame, as its processor does.
  """
  rng = np.random.default_rng(seed)
  v = hf_cfg.vision_config
  features = v.in_channels * v.temporal_patch_size * v.patch_size**2
  text = lambda n: list(rng.integers(3, 100, n))
  seqs, image_grids, video_grids, image_pix, video_pix = [], [], [], [], []
  for items in rows:
    seq = [1]
    for item in items:
      if isinstance(item, int):
        seq += text(item)
        continue
      what, (t, h, w) = item
      per_frame = h * w // 4
      pixels = rng.normal(size=(t * h * w, features)).astype(np.float32)
      if what == "image":
        seq += [START] + [IMAGE] * per_frame * t + [END]
        image_grids.append((t, h, w))
        image_pix.append(pixels)
      elif kind == "qwen3_vl":
        for _ in range(t):
          seq += text(2) + [START] + [VIDEO] * per_frame + [END]
        video_grids.append((t, h, w))
        video_pix.append(pixels)
      else:
        seq += [START] + [VIDEO] * per_frame * t + [END]
        video_grids.append((t, h, w))
        video_pix.append(pixels)
    seq += text(2)
    seqs.append(seq)
  length = max(map(len, seqs))
  ids = np.zeros((len(seqs), length), np.int64)
  mask = np.zeros_like(ids)
  for i, seq in enumerate(seqs):
    ids[i, length - len(seq):] = seq
    mask[i, length - len(seq):] = 1
  out = {"input_ids": ids, "attention_mask": mask,
         "mm_token_type_ids": np.where(ids == IMAGE, 1, np.where(ids == VIDEO, 2, 0))}
  if image_grids:
    out["pixel_values"] = np.concatenate(image_pix)
    out["image_grid_thw"] = np.asarray(image_grids, np.int64)
  if video_grids:
    out["pixel_values_videos"] = np.concatenate(video_pix)
    out["video_grid_thw"] = np.asarray(video_grids, np.int64)
    if kind == "qwen2_5_vl":
      out["second_per_grid_ts"] = np.full(len(video_grids), 0.75, np.float32)
  return out


def reference_logits(model, inputs: dict) -> np.ndarray:
  kw = {k: torch.tensor(v) for k, v in inputs.items()}
  with torch.no_grad():
    return model(**kw).logits.numpy()

"""LLaVA: converted logits equal transformers' in float32, across encoders, decoders and inputs."""

import numpy as np
import pytest
import torch
import transformers

from hf_models import (TOLERANCE, clip_vision_config, llava_config, max_diff, record, save,
                       siglip_vision_config, text_config)
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs

# name -> (vision config, text config, llava kwargs, images per row)
CASES = {
    "clip_llama_layer-2_default": (
        clip_vision_config(), text_config("llama"), dict(vision_feature_layer=-2), (1, 1)),
    "clip_llama_layer-1_full": (
        clip_vision_config(), text_config("llama", num_key_value_heads=4),
        dict(vision_feature_layer=-1, vision_feature_select_strategy="full"), (1, 0)),
    "clip_llama_layer_list_default_gqa4": (
        clip_vision_config(), text_config("llama", num_key_value_heads=1),
        dict(vision_feature_layer=[-1, -3, 0]), (2, 0, 1)),
    "siglip_qwen2_full_tied": (
        siglip_vision_config(), text_config("qwen2", tie_word_embeddings=True),
        dict(vision_feature_layer=-1, vision_feature_select_strategy="full",
             tie_word_embeddings=True), (1, 2)),
    "siglip_qwen2_list_default": (
        siglip_vision_config(vision_use_head=False), text_config("qwen2"),
        dict(vision_feature_layer=[-2, -1]), (1, 1)),
    "clip_qwen3_no_projector_bias": (
        clip_vision_config(hidden_act="gelu"), text_config("qwen3"),
        dict(multimodal_projector_bias=False, projector_hidden_act="gelu"), (0, 3)),
    "clip_mistral_left_padded_three_rows": (
        clip_vision_config(num_hidden_layers=2), text_config("mistral", num_key_value_heads=2),
        dict(), (1, 2, 1)),
}


def tokens_per_image(hf_cfg) -> int:
  v = hf_cfg.vision_config
  n = (v.image_size // v.patch_size) ** 2
  cls_token = 1 if v.model_type == "clip_vision_model" else 0
  return n + cls_token - (1 if hf_cfg.vision_feature_select_strategy == "default" else 0)


def make_inputs(hf_cfg, images_per_row, seed=0):
  """Left-padded rows `text <image>*n text` with a different length per row."""
  rng = np.random.default_rng(seed)
  image_token = hf_cfg.image_token_id
  vocab = hf_cfg.text_config.vocab_size
  n_tok = tokens_per_image(hf_cfg)
  rows = []
  for r, count in enumerate(images_per_row):
    row = [1] + list(rng.integers(2, vocab - 1, 3 + r))
    for _ in range(count):
      row += [image_token] * n_tok + list(rng.integers(2, vocab - 1, 2))
    rows.append(row)
  t = max(len(r) for r in rows)
  ids = np.zeros((len(rows), t), np.int64)
  mask = np.zeros_like(ids)
  for i, row in enumerate(rows):
    ids[i, t - len(row):] = row
    mask[i, t - len(row):] = 1
  v = hf_cfg.vision_config
  pixels = rng.normal(size=(sum(images_per_row), 3, v.image_size, v.image_size)).astype(np.float32)
  positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
  return ids, mask, pixels, positions


def reference_logits(hf_dir, ids, mask, pixels, positions):
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 pixel_values=torch.tensor(pixels) if len(pixels) else None,
                 position_ids=torch.tensor(positions)).logits.numpy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_llava_logits_match_transformers(name, tmp_path):
  vision, text, kw, images = CASES[name]
  hf_cfg = llava_config(vision, text, **kw)
  hf_dir = save(transformers.LlavaForConditionalGeneration(hf_cfg), str(tmp_path / "hf"))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert config.tokens_per_image == tokens_per_image(hf_cfg)

  ids, mask, pixels, positions = make_inputs(hf_cfg, images)
  ref = reference_logits(hf_dir, ids, mask, pixels, positions)
  ours = forward_from_hf_inputs(family, config, params,
                                {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels})
  diff = max_diff(ours, ref, mask)
  record(f"llava/{name}", diff)
  assert diff <= TOLERANCE, diff
  np.testing.assert_array_equal(ours.argmax(-1)[mask == 1], ref.argmax(-1)[mask == 1])


def test_logits_command_keeps_the_processor_contract(tmp_path):
  hf_cfg = llava_config(clip_vision_config(), text_config("llama"))
  hf_dir = save(transformers.LlavaForConditionalGeneration(hf_cfg), str(tmp_path / "hf"), seed=3)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 0
  ids, mask, pixels, positions = make_inputs(hf_cfg, (1, 2), seed=4)
  np.savez(tmp_path / "inputs.npz", input_ids=ids, attention_mask=mask, pixel_values=pixels)
  assert cli.main(["logits", "--checkpoint", str(tmp_path / "mm"), "--inputs",
                   str(tmp_path / "inputs.npz"), "--out", str(tmp_path / "logits.npy")]) == 0
  ours = np.load(tmp_path / "logits.npy")
  assert ours.dtype == np.float32 and ours.shape == (*ids.shape, hf_cfg.text_config.vocab_size)
  diff = max_diff(ours, reference_logits(hf_dir, ids, mask, pixels, positions), mask)
  record("llava/logits_cli", diff)
  assert diff <= TOLERANCE, diff


def test_placeholder_feature_mismatch_names_both_counts(tmp_path):
  hf_cfg = llava_config(clip_vision_config(), text_config("llama"))
  hf_dir = save(transformers.LlavaForConditionalGeneration(hf_cfg), str(tmp_path / "hf"))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  ids, mask, pixels, _ = make_inputs(hf_cfg, (1, 1))
  ids[0, -1] = hf_cfg.image_token_id  # one placeholder too many
  with pytest.raises(PlaceholderMismatchError, match=r"hold 33 placeholder.*give 32 features"):
    forward_from_hf_inputs(family, config, params,
                           {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels})
  np.savez(tmp_path / "bad.npz", input_ids=ids, attention_mask=mask, pixel_values=pixels)
  assert cli.main(["logits", "--checkpoint", str(tmp_path / "mm"), "--inputs",
                   str(tmp_path / "bad.npz"), "--out", str(tmp_path / "x.npy")]) == 1
  assert not (tmp_path / "x.npy").exists()

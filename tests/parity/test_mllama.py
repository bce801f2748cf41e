"""Llama 3.2 Vision: converted logits equal transformers' in float32, greedy generation equals
transformers' `generate`, conversion round-trips bit for bit.

Cases cover cross-attention layers at layer 0 and at the last layer, a periodic layout (one
scanned segment) and irregular ones (several), 1-4 tiles per image, several images per row
(separate and consecutive image tokens), a text-only row in a batch with images, a batch
without images (the cross-attention layers are skipped), left padding, llama3 RoPE.
"""

import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, max_diff, record, save
from mllama_models import IMAGE, PAD, build, make_inputs, mllama_config, reference_logits
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

# name -> (config kwargs, rows: text-token counts and images as (tile rows, tile cols))
CASES = {
    "cross_at_0_two_tiles_left_padded": (
        dict(cross_layers=(0, 3), text_layers=4),
        [[2, (1, 2), 5], [(2, 1), 3]]),
    "cross_at_last_several_images_text_row": (
        dict(cross_layers=(1, 4), text_layers=5, rope=LLAMA3_ROPE),
        [[3, (1, 1), 2, (2, 2), 4], [2, (1, 3), (1, 1), 6], [7]]),
    "periodic_one_segment_four_tiles": (
        dict(cross_layers=(1, 4), text_layers=6, global_layers=2, intermediate=(1,)),
        [[(2, 2), 4], [1, (4, 1), 2]]),
    "two_tile_grid_consecutive_images": (
        dict(cross_layers=(2,), text_layers=3, max_tiles=2, intermediate=(0, 1, -1)),
        [[2, (1, 2), (2, 1), 3], [(1, 1), 5]]),
}


def _convert(hf_cfg, tmp_path, seed=0):
  hf_dir = save(build(hf_cfg, seed), str(tmp_path / "hf"), seed=seed)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  model = transformers.MllamaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  return model, hf_dir


@pytest.mark.parametrize("name", sorted(CASES))
def test_mllama_logits_match_transformers(name, tmp_path):
  kw, rows = CASES[name]
  hf_cfg = mllama_config(**kw)
  model, _ = _convert(hf_cfg, tmp_path)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == "mllama" and config.decoder.cross_attention_layers == kw["cross_layers"]
  inputs = make_inputs(hf_cfg, rows)
  ref = reference_logits(model, inputs)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  diff = max_diff(ours, ref, inputs["attention_mask"])
  record(f"mllama/{name}", diff)
  assert ours.shape == ref.shape and diff <= TOLERANCE, diff


def test_text_only_batch_skips_cross_attention(tmp_path):
  hf_cfg = mllama_config(cross_layers=(0, 2), text_layers=3)
  model, _ = _convert(hf_cfg, tmp_path, seed=1)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  inputs = make_inputs(hf_cfg, [[6], [3]])
  diff = max_diff(forward_from_hf_inputs(family, config, params, inputs),
                  reference_logits(model, inputs), inputs["attention_mask"])
  record("mllama/text_only_batch", diff)
  assert diff <= TOLERANCE, diff


def test_image_tokens_must_match_images(tmp_path):
  hf_cfg = mllama_config(cross_layers=(1,), text_layers=2)
  _convert(hf_cfg, tmp_path)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  inputs = make_inputs(hf_cfg, [[2, (1, 1), 2]])
  inputs["input_ids"][0, -1] = IMAGE  # one image token more than images
  with pytest.raises(PlaceholderMismatchError, match="image tokens"):
    forward_from_hf_inputs(family, config, params, inputs)
  bad = make_inputs(hf_cfg, [[2, (1, 1), 2]])
  bad["cross_attention_mask"] = bad["cross_attention_mask"][:, :-1]
  with pytest.raises(ValueError, match="cross_attention_mask"):
    forward_from_hf_inputs(family, config, params, bad)


def _greedy_by_forward(model, inputs, n):
  """transformers' greedy ids by full forward passes, extending the inputs as its `generate`
  does (attention mask 1, position + 1, the last row of `cross_attention_mask` repeated).
  transformers 5.24's `generate` itself fails when layer 0 is a cross-attention layer (it reads
  the prompt length from layer 0's cache, which then holds the image keys)."""
  inputs = {k: np.asarray(v) for k, v in inputs.items()}
  out = []
  for _ in range(n):
    token = reference_logits(model, inputs)[:, -1].argmax(-1)
    out.append(token)
    inputs["input_ids"] = np.concatenate([inputs["input_ids"], token[:, None]], 1)
    inputs["attention_mask"] = np.pad(inputs["attention_mask"], ((0, 0), (0, 1)),
                                      constant_values=1)
    inputs["position_ids"] = np.concatenate(
        [inputs["position_ids"], inputs["position_ids"][:, -1:] + 1], 1)
    if "cross_attention_mask" in inputs:
      cross = inputs["cross_attention_mask"]
      inputs["cross_attention_mask"] = np.concatenate([cross, cross[:, -1:]], 1)
  return np.stack(out, 1)


GENERATE_CASES = {
    "images_and_text_row": (dict(cross_layers=(1, 3), text_layers=4),
                            [[2, (1, 2), 3], [(2, 2), 1, (1, 1), 2], [5]]),
    "periodic_llama3": (dict(cross_layers=(1, 4), text_layers=6, rope=LLAMA3_ROPE),
                        [[(1, 1), 4], [3, (2, 1), 1]]),
    "text_only": (dict(cross_layers=(1,), text_layers=3), [[4], [7]]),
}


def _generate(family, config, params, inputs, n):
  from mmjax.generation import GenerateConfig, Generator

  return Generator(family, config, params)(
      inputs["input_ids"], inputs["attention_mask"], family.generation_pixels(config, inputs),
      gen=GenerateConfig(n, pad_id=PAD))


@pytest.mark.parametrize("name", sorted(GENERATE_CASES))
def test_mllama_greedy_matches_transformers(name, tmp_path):
  kw, rows = GENERATE_CASES[name]
  hf_cfg = mllama_config(**kw)
  model, _ = _convert(hf_cfg, tmp_path, seed=2)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  inputs = make_inputs(hf_cfg, rows, seed=3)
  n = 12
  hf_inputs = {k: torch.tensor(v) for k, v in inputs.items() if k != "position_ids"}
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    ref = model.generate(**hf_inputs, do_sample=False, max_new_tokens=n, pad_token_id=PAD)
  ref = ref[:, inputs["input_ids"].shape[1]:].numpy()
  np.testing.assert_array_equal(_generate(family, config, params, inputs, n), ref)


def test_greedy_with_cross_attention_at_layer_0(tmp_path):
  hf_cfg = mllama_config(cross_layers=(0, 3), text_layers=4)
  model, _ = _convert(hf_cfg, tmp_path, seed=4)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  inputs = make_inputs(hf_cfg, [[2, (1, 2), 3], [(2, 2), 1, (1, 1), 2], [5]], seed=5)
  np.testing.assert_array_equal(_generate(family, config, params, inputs, 8),
                                _greedy_by_forward(model, inputs, 8))

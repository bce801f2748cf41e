"""InternVL: converted logits equal transformers' in float32 (native and original layouts), several
tiles and images per row, tied and untied heads, Qwen2 / Llama / InternLM2 decoders; greedy ids."""

import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, max_diff, record, text_config
from internvl_models import (internvl_config, make_inputs, reference_logits, tiny,
                             vision_config, write_original)
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.generation import generate
from mmjax.models.registry import forward_from_hf_inputs

# name -> (vision kwargs, text config, InternVL kwargs, tiles of each image, per row)
CASES = {
    # InternViT-300M style (LayerNorm, qkv bias), Qwen2 (InternVL2.5 / 3), text-only row.
    "layernorm_qwen2_untied": (
        {}, text_config("qwen2"), {}, [(2,), (1, 3), ()]),
    # InternViT-6B style (RMSNorm, q/k norm over all heads, no qkv bias), tied head.
    "rmsnorm_qknorm_qwen2_tied": (
        dict(norm_type="rms_norm", use_qk_norm=True, attention_bias=False),
        text_config("qwen2", tie_word_embeddings=True), {}, [(3,)]),
    # Final vision LayerNorm (use_mean_pooling=False), Llama with a single KV head.
    "post_norm_llama_one_kv_head": (
        dict(use_mean_pooling=False), text_config("llama", num_key_value_heads=1), {},
        [(1,), (2,)]),
    # Features from the second-to-last vision layer, gelu_tanh projector, two images in a row.
    "feature_layer-2_llama": (
        {}, text_config("llama"), dict(vision_feature_layer=-2,
                                       projector_hidden_act="gelu_pytorch_tanh"), [(1, 1)]),
}


def _check(name, family, config, params, hf_dir, inputs):
  ref = reference_logits(hf_dir, inputs)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  mask = inputs["attention_mask"]
  diff = max_diff(ours, ref, mask)
  record(f"internvl/{name}", diff)
  assert diff <= TOLERANCE, diff
  np.testing.assert_array_equal(ours.argmax(-1)[mask == 1], ref.argmax(-1)[mask == 1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_internvl_logits_match_transformers(name, tmp_path):
  vision, text, kw, rows = CASES[name]
  hf_cfg = internvl_config(vision_config(**vision), text, **kw)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == "internvl" and config.tokens_per_image == 16
  _check(name, family, config, params, hf_dir, make_inputs(hf_cfg, rows))


# decoder -> (vision kwargs, text config): the original release's layout, re-keyed from native.
ORIGINAL_CASES = {
    # InternVL2 / 2.5 with InternLM2: wqkv grouped per KV head (2 groups), with biases.
    "internlm2": ({}, text_config("llama", attention_bias=True)),
    # InternVL 2.5 / 3 with Qwen2 and InternViT-6B-style blocks, tied head.
    "qwen2": (dict(norm_type="rms_norm", use_qk_norm=True, attention_bias=False),
              text_config("qwen2", tie_word_embeddings=True)),
}


@pytest.mark.parametrize("decoder", sorted(ORIGINAL_CASES))
def test_original_layout_logits_match_transformers(decoder, tmp_path):
  vision, text = ORIGINAL_CASES[decoder]
  hf_cfg = internvl_config(vision_config(**vision), text)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=1)
  original = write_original(hf_dir, str(tmp_path / "original"), decoder)
  report = convert_hf(original, str(tmp_path / "mm"), progress=False)
  assert report["family"] == "internvl_chat" and report["layout"] == "original"
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == "internvl" and config.original_decoder == decoder
  assert config.vision.drop_path_rate == 0.1  # read, and inactive outside training
  _check(f"original_{decoder}", family, config, params, hf_dir,
         make_inputs(hf_cfg, [(1, 2), (3,)], seed=2))


def test_logits_command_takes_processor_arrays(tmp_path):
  hf_cfg = internvl_config(vision_config(), text_config("qwen2"))
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=3)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 0
  inputs = make_inputs(hf_cfg, [(2,), (1,)], seed=4)
  np.savez(tmp_path / "inputs.npz", **inputs)
  assert cli.main(["logits", "--checkpoint", str(tmp_path / "mm"), "--inputs",
                   str(tmp_path / "inputs.npz"), "--out", str(tmp_path / "logits.npy")]) == 0
  ours = np.load(tmp_path / "logits.npy")
  diff = max_diff(ours, reference_logits(hf_dir, inputs), inputs["attention_mask"])
  record("internvl/logits_cli", diff)
  assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("tied", [False, True])
def test_greedy_generation_matches_transformers(tied, tmp_path):
  text = text_config("qwen2", tie_word_embeddings=tied)
  hf_cfg = internvl_config(vision_config(), text)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=5)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  inputs = make_inputs(hf_cfg, [(2,), (1, 1), (3,)], seed=6)
  ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
  model = transformers.InternVLForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    ref = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         pixel_values=torch.tensor(pixels), do_sample=False, max_new_tokens=12,
                         pad_token_id=0)[:, ids.shape[1]:].numpy()
  ours = generate(family, config, params, ids, mask, np.transpose(pixels, (0, 2, 3, 1)),
                  max_new_tokens=12, pad_id=0)
  np.testing.assert_array_equal(ours, ref)

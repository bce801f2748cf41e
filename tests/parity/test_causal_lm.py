"""Llama / Mistral / Qwen2 / Qwen3 / Persimmon causal LMs: converted logits equal transformers' in float32."""

import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, max_diff, record, save, text_config
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.models.registry import forward_from_hf_inputs

CASES = {
    "llama_mha": ("llama", dict(num_key_value_heads=4)),
    "llama_gqa4_llama3_rope_biases": ("llama", dict(
        num_key_value_heads=1, attention_bias=True, mlp_bias=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16))),
    "llama_tied_linear_rope": ("llama", dict(
        tie_word_embeddings=True, rope_parameters=dict(rope_type="linear", rope_theta=500.0,
                                                        factor=2.0))),
    "llama_dynamic_rope_beyond_max": ("llama", dict(
        max_position_embeddings=8, rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0,
                                                         factor=2.0))),
    "llama_yarn_rope": ("llama", dict(
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=8))),
    "mistral_sliding_window": ("mistral", dict(sliding_window=4, num_key_value_heads=2)),
    "qwen2_qkv_bias_gqa": ("qwen2", dict(num_key_value_heads=2)),
    "qwen3_qk_norm_tied": ("qwen3", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    # LayerNorms, q/k LayerNorms, relu² dense MLP, fused per-head qkv, half the head rotated.
    "persimmon_qk_layernorm_partial_rope": ("persimmon", dict()),
    "persimmon_no_qk_norm_quarter_rope_tied": ("persimmon", dict(
        qk_layernorm=False, tie_word_embeddings=True, layer_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=500.0, partial_rotary_factor=0.25))),
}


def left_padded_batch(vocab: int, lengths=(12, 9, 7), seed=0):
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.zeros((len(lengths), t), np.int64)
  mask = np.zeros((len(lengths), t), np.int64)
  for row, n in enumerate(lengths):
    ids[row, t - n:] = rng.integers(1, vocab, n)
    mask[row, t - n:] = 1
  positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
  return ids, mask, positions


@pytest.mark.parametrize("name", sorted(CASES))
def test_causal_lm_logits_match_transformers(name, tmp_path):
  model_type, kw = CASES[name]
  cfg = text_config(model_type, **kw)
  cfg._attn_implementation = "eager"
  hf_dir = save(transformers.AutoModelForCausalLM.from_config(cfg), str(tmp_path / "hf"))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert config.tie_embeddings == bool(kw.get("tie_word_embeddings", False))

  ids, mask, positions = left_padded_batch(cfg.vocab_size)
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions)).logits.numpy()
  ours = forward_from_hf_inputs(family, config, params, {"input_ids": ids, "attention_mask": mask})
  diff = max_diff(ours, ref, mask)
  record(f"causal_lm/{name}", diff)
  assert diff <= TOLERANCE, diff
  # Greedy next tokens agree too.
  np.testing.assert_array_equal(ours.argmax(-1)[mask == 1], ref.argmax(-1)[mask == 1])

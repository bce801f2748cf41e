"""Greedy ids equal transformers' `generate(do_sample=False)`: left-padded batches, several images
per prompt, GQA, tied embeddings, Qwen2/Qwen3/Mistral/Persimmon decoders, stop tokens."""

import numpy as np
import pytest

from gen_helpers import (PAD, build_causal_lm, build_llava, hf_greedy, llava_prompts, nhwc,
                         text_prompts)
from hf_models import clip_vision_config, siglip_vision_config, text_config
from mmjax.generation import GenerateConfig, Generator, generate

N = 16

# name -> (vision config, text config, llava kwargs, images per row)
LLAVA_CASES = {
    "clip_llama_gqa_multi_image": (
        clip_vision_config(), text_config("llama", num_key_value_heads=2), {}, (1, 2, 0)),
    "siglip_qwen2_tied": (
        siglip_vision_config(), text_config("qwen2", tie_word_embeddings=True),
        dict(vision_feature_layer=-1, vision_feature_select_strategy="full",
             tie_word_embeddings=True), (2, 1)),
    "clip_qwen3_one_kv_head": (
        clip_vision_config(num_hidden_layers=2), text_config("qwen3", num_key_value_heads=1),
        dict(vision_feature_layer=[-1, -2]), (0, 3)),
}


@pytest.mark.parametrize("name", sorted(LLAVA_CASES))
def test_llava_greedy_matches_transformers(name, tmp_path):
  vision, text, kw, images = LLAVA_CASES[name]
  model, hf_cfg, family, config, params = build_llava(tmp_path, vision, text, **kw)
  ids, mask, pixels = llava_prompts(hf_cfg, images)
  assert len(set(mask.sum(1))) == len(images)  # every row has its own length
  ref = hf_greedy(model, ids, mask, pixels, n=N)
  ours = generate(family, config, params, ids, mask, nhwc(pixels), max_new_tokens=N, pad_id=PAD)
  assert ours.shape == (len(images), N)
  np.testing.assert_array_equal(ours, ref)


def test_causal_lm_sliding_window_greedy_matches_transformers(tmp_path):
  """Mistral with a window shorter than prompt + answer: the cache mask must slide too."""
  text = text_config("mistral", sliding_window=12)
  model, family, config, params = build_causal_lm(tmp_path, text, seed=1)
  ids, mask = text_prompts(text.vocab_size, (9, 4, 14))
  ref = hf_greedy(model, ids, mask, n=N)
  np.testing.assert_array_equal(
      generate(family, config, params, ids, mask, max_new_tokens=N, pad_id=PAD), ref)


def test_persimmon_greedy_matches_transformers(tmp_path):
  """Persimmon (LayerNorms, relu² MLP, partial RoPE) through the KV cache."""
  text = text_config("persimmon")
  model, family, config, params = build_causal_lm(tmp_path, text, seed=2)
  ids, mask = text_prompts(text.vocab_size, (9, 4, 14))
  ref = hf_greedy(model, ids, mask, n=N)
  np.testing.assert_array_equal(
      generate(family, config, params, ids, mask, max_new_tokens=N, pad_id=PAD), ref)


def test_stop_tokens_end_rows_like_transformers(tmp_path):
  """Rows end at their first stop token (kept), the rest is padding; generation halts early."""
  model, hf_cfg, family, config, params = build_llava(tmp_path, seed=2)
  ids, mask, pixels = llava_prompts(hf_cfg, (1, 1, 1), seed=5)
  free = hf_greedy(model, ids, mask, pixels, n=N)
  stop = int(free[0, 3])  # a token row 0 emits early
  ref = hf_greedy(model, ids, mask, pixels, n=N, eos=stop)
  gen = GenerateConfig(N, stop_ids=(stop,), pad_id=PAD)
  ours = Generator(family, config, params)(ids, mask, nhwc(pixels), gen=gen)
  np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)
  assert (ours[:, ref.shape[1]:] == PAD).all()
  for row in ours:
    hits = np.flatnonzero(row == stop)
    if len(hits):
      assert (row[hits[0] + 1:] == PAD).all()

"""T5 / Flan-T5 as a text model (`t5` family): converted decoder logits equal transformers'
(`T5ForConditionalGeneration`) in float32, greedy generation equals its `generate`, and export
round trips bit for bit.

Configs: Flan-T5's shape (gated-GELU, untied head, no output scaling; 8 buckets up to distance
16) and original T5's (ReLU, tied head scaled by d_model**-0.5, 10 buckets up to 20, head_dim 16
so that heads * head_dim != d_model, 3 decoder layers over 2 encoder ones). Encoder rows are
padded on the right (T5's tokenizer) and on the left, longer than `max_distance`.
"""


import numpy as np
import pytest
import torch
import transformers

from hf_files import assert_conversion_refuses, assert_same_tensors, load_tensors
from hf_models import assert_logits_match
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.models.registry import forward_from_hf_inputs
from t5_models import (decoder_rows, hf_seq2seq_greedy, load_t5, padded_rows, t5_text_config,
                       tiny_t5)

CONFIGS = {
    "flan_gated_untied": t5_text_config(),
    "relu_tied_scaled": t5_text_config("relu", tie=True, d_kv=16, num_decoder_layers=3,
                                       relative_attention_num_buckets=10,
                                       relative_attention_max_distance=20),
}
FIRST = "flan_gated_untied"
N = 6  # generated tokens


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  built = {}

  def get(name):
    if name not in built:
      root = tmp_path_factory.mktemp(name)
      hf_dir = tiny_t5(str(root / "hf"), CONFIGS[name])
      convert_hf(hf_dir, str(root / "mm"), progress=False)
      built[name] = (root, load_t5(hf_dir), load_checkpoint(str(root / "mm")))
    return built[name]

  return get


def encoder_batch(vocab: int) -> dict:
  """Four rows: two right-padded, two left-padded, up to 23 tokens."""
  right = padded_rows(vocab, (23, 9), "right")
  left = padded_rows(vocab, (15, 4, 23), "left", seed=3)
  left = (left[0][:2], left[1][:2])  # the third row sets the width
  return {"input_ids": np.concatenate([right[0], left[0]]),
          "attention_mask": np.concatenate([right[1], left[1]])}


def reference(model, inputs) -> np.ndarray:
  with torch.no_grad():
    return model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()


def test_first_config_through_the_logits_command(converted):
  root, model, (family, config, _) = converted(FIRST)
  assert family.name == "t5" and config.gated and not config.tie_embeddings
  assert not config.scale_decoder_outputs
  inputs = {**encoder_batch(64), "decoder_input_ids": decoder_rows(64, 4, 7)}
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["logits", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "logits.npy")]) == 0
  ours = np.load(root / "logits.npy")
  assert ours.dtype == np.float32 and ours.shape == (4, 7, 64)
  assert_logits_match(f"t5/{FIRST}", ours, reference(model, inputs), np.ones((4, 7)))


def test_second_config_with_a_padded_decoder(converted):
  """Original T5 (tied, scaled, ReLU); decoder rows right-padded under decoder_attention_mask."""
  _, model, (family, config, params) = converted("relu_tied_scaled")
  assert config.tie_embeddings and config.scale_decoder_outputs and config.num_layers == 3
  decoder_mask = np.ones((4, 7), np.int64)
  decoder_mask[1, 5:] = decoder_mask[3, 3:] = 0
  inputs = {**encoder_batch(64), "decoder_input_ids": decoder_rows(64, 4, 7, seed=2),
            "decoder_attention_mask": decoder_mask}
  assert_logits_match("t5/relu_tied_scaled", forward_from_hf_inputs(family, config, params, inputs),
                      reference(model, inputs), decoder_mask)


def test_greedy_generation_through_the_generate_command(converted):
  """The encoder runs once on right- and left-padded rows; the decoder decodes from its start
  token with a KV cache (transformers 5.24 cannot generate with unequal depths, so Flan-T5's)."""
  root, model, _ = converted(FIRST)
  inputs = encoder_batch(64)
  np.savez(root / "gen.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "gen.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  ours = np.load(root / "ids.npy")
  ref = hf_seq2seq_greedy(model, inputs, N)
  assert len(np.unique(ref)) > 3  # not a degenerate repetition
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_round_trips_bit_for_bit(converted, tmp_path, name):
  root, _, (family, config, _) = converted(name)
  assert family.config_from_hf(family.hf_config(config)) == config
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  saved = load_tensors(str(root / "hf"))
  assert ("lm_head.weight" in saved) == (not config.tie_embeddings)
  assert_same_tensors(saved, load_tensors(str(tmp_path / "back")))
  back, info = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert (back.lm_head.weight is back.shared.weight) == config.tie_embeddings
  assert back.config.scale_decoder_outputs == config.scale_decoder_outputs


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items()
                if k != "decoder.block.1.layer.1.EncDecAttention.k.weight"},
     r"missing key 'decoder\.block\.1\.layer\.1\.EncDecAttention\.k\.weight'"),
    (lambda t: {**t, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight":
                torch.ones(8, 4)},
     r"unexpected key 'encoder\.block\.1\.layer\.0\.SelfAttention\.relative_attention_bias"),
])
def test_strict_errors_name_the_key(converted, tmp_path, change, message):
  root, _, _ = converted(FIRST)
  assert_conversion_refuses(root / "hf", tmp_path, change, message)


def test_logits_need_decoder_ids(converted):
  _, _, (family, config, params) = converted(FIRST)
  with pytest.raises(KeyError, match="decoder_input_ids"):
    forward_from_hf_inputs(family, config, params, encoder_batch(64))

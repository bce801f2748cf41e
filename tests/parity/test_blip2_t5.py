"""BLIP-2 with a Flan-T5 language model (`blip-2-t5`): converted decoder logits equal
transformers' (`Blip2ForConditionalGeneration` with a `t5` text config) in float32 on
`Blip2Processor`'s arrays plus `decoder_input_ids`, greedy generation equals its `generate`, and
conversion round trips bit for bit.

Configs: a Q-Former of depth 2 crossing in every layer before Flan-T5's shape (gated-GELU,
untied head), and of depth 3 crossing every second layer (a scanned group and a remainder)
before original T5's (ReLU, tied and scaled head). Inputs: three rows, the image tokens in
front, prompts of different lengths right-padded as T5's tokenizer pads.
"""

import numpy as np
import pytest
import torch
import transformers

from hf_files import assert_same_tensors, load_tensors
from hf_models import assert_logits_match
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs
from t5_models import (IMAGE, blip2_t5_config, blip2_t5_inputs, decoder_rows,
                       hf_seq2seq_greedy, load_blip2_t5, tiny_blip2_t5)

CONFIGS = {
    "flan_depth2_freq1": dict(depth=2, freq=1),
    "relu_tied_depth3_freq2": dict(depth=3, freq=2, queries=4, feed_forward_proj="relu",
                                   tie=True, relative_attention_num_buckets=10),
}
FIRST = "flan_depth2_freq1"
N = 5  # generated tokens


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  built = {}

  def get(name):
    if name not in built:
      root = tmp_path_factory.mktemp(name)
      hf_cfg = blip2_t5_config(**CONFIGS[name])
      hf_dir = tiny_blip2_t5(str(root / "hf"), hf_cfg)
      convert_hf(hf_dir, str(root / "mm"), progress=False)
      built[name] = (root, hf_cfg, load_blip2_t5(hf_dir), load_checkpoint(str(root / "mm")))
    return built[name]

  return get


def with_decoder(inputs: dict, seed: int = 1) -> dict:
  return {**inputs, "decoder_input_ids": decoder_rows(64, len(inputs["input_ids"]), 6, seed)}


def reference(model, inputs) -> np.ndarray:
  with torch.no_grad():
    return model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()


def test_first_config_through_the_logits_command(converted):
  root, hf_cfg, model, (family, config, _) = converted(FIRST)
  assert family.name == "blip-2-t5" and not config.decoder.tie_embeddings
  inputs = with_decoder(blip2_t5_inputs(hf_cfg))
  ids, mask = inputs["input_ids"], inputs["attention_mask"]
  assert (ids[:, :3] == IMAGE).all() and (mask[1:, -1] == 0).all()  # right padding
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["logits", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "logits.npy")]) == 0
  ours = np.load(root / "logits.npy")
  assert ours.shape == (3, 6, 64)
  assert_logits_match(f"blip2_t5/{FIRST}", ours, reference(model, inputs), np.ones((3, 6)))


def test_second_config_logits(converted):
  _, hf_cfg, model, (family, config, params) = converted("relu_tied_depth3_freq2")
  assert config.qformer.cross_layers == (0, 2) and config.decoder.tie_embeddings
  inputs = with_decoder(blip2_t5_inputs(hf_cfg, lengths=(2, 7, 4), seed=1), seed=2)
  assert_logits_match("blip2_t5/relu_tied_depth3_freq2",
                      forward_from_hf_inputs(family, config, params, inputs),
                      reference(model, inputs), np.ones((3, 6)))


def test_greedy_generation_through_the_generate_command(converted):
  """The images and the prompt are encoded once; the decoder starts from its start token."""
  root, hf_cfg, model, _ = converted(FIRST)
  inputs = blip2_t5_inputs(hf_cfg, lengths=(2, 7, 4), seed=1)
  np.savez(root / "gen.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "gen.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  ref = hf_seq2seq_greedy(model, inputs, N)
  assert len(np.unique(ref)) > 3
  np.testing.assert_array_equal(np.load(root / "ids.npy"), ref)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_round_trips_bit_for_bit(converted, tmp_path, name):
  root, _, _, (family, config, _) = converted(name)
  assert family.config_from_hf(family.hf_config(config)) == config
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  saved = load_tensors(str(root / "hf"))
  assert ("language_model.lm_head.weight" in saved) == (not config.decoder.tie_embeddings)
  assert_same_tensors(saved, load_tensors(str(tmp_path / "back")))
  _, info = transformers.Blip2ForConditionalGeneration.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_inputs_that_disagree_are_named(converted):
  _, hf_cfg, _, (family, config, params) = converted(FIRST)
  inputs = with_decoder(blip2_t5_inputs(hf_cfg))
  with pytest.raises(PlaceholderMismatchError, match=r"hold 9 placeholder.* give 6 features"):
    forward_from_hf_inputs(family, config, params,
                           {**inputs, "pixel_values": inputs["pixel_values"][:2]})

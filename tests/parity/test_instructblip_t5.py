"""InstructBLIP with a Flan-T5 language model (`instructblip-t5`): converted decoder logits equal
transformers' (`InstructBlipForConditionalGeneration` with a `t5` text config) in float32 on
`InstructBlipProcessor`'s arrays plus `decoder_input_ids`, greedy generation equals its
`generate`, and conversion round trips bit for bit.

One config: a Q-Former of depth 2 crossing every second layer with its own text embeddings,
reading the right-padded instruction; Flan-T5's shape (gated-GELU, untied head).
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
from mmjax.models.registry import forward_from_hf_inputs
from t5_models import (blip2_t5_config, blip2_t5_inputs, decoder_rows, hf_seq2seq_greedy,
                       load_blip2_t5, tiny_blip2_t5)

NAME = "flan_depth2_freq2"
N = 5  # generated tokens


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp(NAME)
  hf_cfg = blip2_t5_config(depth=2, freq=2, instruct=True)
  hf_dir = tiny_blip2_t5(str(root / "hf"), hf_cfg)
  convert_hf(hf_dir, str(root / "mm"), progress=False)
  return root, hf_cfg, load_blip2_t5(hf_dir), load_checkpoint(str(root / "mm"))


def reference(model, inputs) -> np.ndarray:
  with torch.no_grad():
    return model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()


def test_logits_through_the_logits_command(converted):
  root, hf_cfg, model, (family, config, params) = converted
  assert family.name == "instructblip-t5" and config.qformer.text_vocab_size == 64
  inputs = {**blip2_t5_inputs(hf_cfg), "decoder_input_ids": decoder_rows(64, 3, 6)}
  assert (inputs["qformer_attention_mask"] == 0).any()  # padded instruction rows
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["logits", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "logits.npy")]) == 0
  assert_logits_match(f"instructblip_t5/{NAME}", np.load(root / "logits.npy"),
                      reference(model, inputs), np.ones((3, 6)))
  # The Q-Former reads the instruction: other ids, other logits (still transformers').
  changed = dict(inputs, qformer_input_ids=(inputs["qformer_input_ids"] + 5) % 53)
  ours = forward_from_hf_inputs(family, config, params, changed)
  assert np.abs(ours - np.load(root / "logits.npy")).max() > 1e-3
  assert_logits_match(f"instructblip_t5/{NAME}/other_instruction", ours,
                      reference(model, changed), np.ones((3, 6)))


def test_greedy_generation_through_the_generate_command(converted):
  root, hf_cfg, model, _ = converted
  inputs = blip2_t5_inputs(hf_cfg, lengths=(2, 7, 4), seed=1)
  np.savez(root / "gen.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "gen.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  ref = hf_seq2seq_greedy(model, inputs, N)
  assert len(np.unique(ref)) > 3
  np.testing.assert_array_equal(np.load(root / "ids.npy"), ref)


def test_export_round_trips_bit_for_bit(converted, tmp_path):
  root, _, _, (family, config, _) = converted
  assert family.config_from_hf(family.hf_config(config)) == config
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(str(root / "hf")), load_tensors(str(tmp_path / "back")))
  _, info = transformers.InstructBlipForConditionalGeneration.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info

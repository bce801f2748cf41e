"""InstructBLIP: converted logits equal transformers' (`InstructBlipForConditionalGeneration`) in
float32 on `InstructBlipProcessor`'s arrays, greedy generation equals its `generate`, and
conversion round trips bit for bit.

One config: a Llama decoder, a Q-Former of depth 2 crossing every second layer with its own
text embeddings. The instruction's ids run beside the queries in the Q-Former under the
all-see-all mask (transformers 5's processor pads them on the language model tokenizer's side,
the left here, so the text rows' positions count the padding as transformers does).
"""

import numpy as np
import pytest
import transformers

from blip2_models import (hf_greedy, instructblip_config, instructblip_reference,
                          instructblip_tiny, make_instructblip_inputs)
from hf_files import assert_same_tensors, load_tensors
from hf_models import assert_logits_match, cli_logits, converted_once, reference_logits
from mmjax import cli
from mmjax.convert.exporter import export_hf
from mmjax.models.registry import forward_from_hf_inputs

NAME = "llama_depth2_freq2"
N = 5  # generated tokens


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  get = converted_once(tmp_path_factory, "instructblip", lambda name: instructblip_config(),
                       instructblip_tiny, instructblip_reference)
  return get(NAME)


def test_logits_through_the_logits_command(converted):
  root, hf_cfg, model, (family, config, _) = converted
  assert family.name == "instructblip" and config.qformer.text_vocab_size == 64
  inputs = make_instructblip_inputs(hf_cfg)
  assert (inputs["qformer_attention_mask"] == 0).any()  # padded instruction rows
  assert_logits_match(f"instructblip/{NAME}", cli_logits(str(root / "mm"), inputs, root),
                      reference_logits(model, inputs), inputs["attention_mask"])


def test_the_instruction_changes_the_logits(converted):
  """The Q-Former reads the instruction: other ids, other logits (still transformers')."""
  _, hf_cfg, model, (family, config, params) = converted
  inputs = make_instructblip_inputs(hf_cfg)
  base = forward_from_hf_inputs(family, config, params, inputs)
  changed = dict(inputs, qformer_input_ids=(inputs["qformer_input_ids"] + 5) % 54)
  ours = forward_from_hf_inputs(family, config, params, changed)
  assert np.abs(ours - base).max() > 1e-3
  assert_logits_match(f"instructblip/{NAME}/other_instruction", ours,
                      reference_logits(model, changed), inputs["attention_mask"])


def test_greedy_generation_through_the_generate_command(converted):
  root, hf_cfg, model, _ = converted
  inputs = make_instructblip_inputs(hf_cfg)
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  np.testing.assert_array_equal(np.load(root / "ids.npy"), hf_greedy(model, inputs, N))


def test_export_round_trips_bit_for_bit(converted, tmp_path):
  root, _, _, (family, config, _) = converted
  assert family.config_from_hf(family.hf_config(config)) == config
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(str(root / "hf")), load_tensors(str(tmp_path / "back")))
  _, info = transformers.InstructBlipForConditionalGeneration.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info

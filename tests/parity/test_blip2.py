"""BLIP-2: converted logits equal transformers' (`Blip2ForConditionalGeneration`) in float32 on
`Blip2Processor`'s arrays, greedy generation equals its `generate`, and conversion round trips
bit for bit.

Configs: OPT with a Q-Former of depth 2 crossing in every layer, OPT with depth 3 crossing every
second layer (a scanned group and a remainder), a Llama decoder (untied head). Inputs: three rows
of different prompt lengths, left-padded by the processor behind the image tokens (padding in the
middle of the row, as transformers 5's processor lays it out).
"""


import numpy as np
import pytest
import torch
import transformers

from blip2_models import (IMAGE, blip2_config, hf_greedy, load_reference, make_inputs, processor,
                          tiny)
from hf_files import assert_conversion_refuses, assert_same_tensors, load_tensors
from hf_models import assert_logits_match, cli_logits, converted_once, reference_logits
from mmjax import cli
from mmjax.convert.exporter import export_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs

CONFIGS = {
    "opt_depth2_freq1": dict(depth=2, freq=1),
    "opt_depth3_freq2": dict(depth=3, freq=2, queries=4),
    "llama_depth2_freq2": dict(depth=2, freq=2, text="llama", vision_act="quick_gelu"),
}
FIRST = "opt_depth2_freq1"
N = 5  # generated tokens


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  return converted_once(tmp_path_factory, "blip2", lambda name: blip2_config(**CONFIGS[name]),
                        tiny, load_reference)


def test_first_config_through_the_logits_command(converted):
  """`mmjax logits --inputs` on the processor's arrays (image tokens, then left padding)."""
  root, hf_cfg, model, (family, _, _) = converted(FIRST)
  assert family.name == "blip-2"
  inputs = make_inputs(hf_cfg)
  ids, mask = inputs["input_ids"], inputs["attention_mask"]
  assert (ids[:, :3] == IMAGE).all() and (mask[:, :3] == 1).all() and (mask[1:, 3] == 0).all()
  assert_logits_match(f"blip2/{FIRST}", cli_logits(str(root / "mm"), inputs, root),
                      reference_logits(model, inputs), mask)


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - {FIRST}))
def test_logits_match_transformers(converted, name):
  _, hf_cfg, model, (family, config, params) = converted(name)
  inputs = make_inputs(hf_cfg, lengths=(2, 7, 4), seed=1)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  ref = reference_logits(model, inputs)
  assert ours.shape == ref.shape == (*inputs["input_ids"].shape, hf_cfg.text_config.vocab_size)
  assert_logits_match(f"blip2/{name}", ours, ref, inputs["attention_mask"])


def test_greedy_generation_through_the_generate_command(converted):
  """`mmjax generate --inputs`: greedy ids equal transformers' `generate` (the images only in the
  prefill; OPT's learned positions continue from the attention mask, padding in mid-row)."""
  root, hf_cfg, model, _ = converted(FIRST)
  inputs = make_inputs(hf_cfg, lengths=(2, 7, 4), seed=1)
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  np.testing.assert_array_equal(np.load(root / "ids.npy"), hf_greedy(model, inputs, N))


def test_export_round_trips_bit_for_bit(converted, tmp_path):
  """HF -> mmjax -> HF (OPT tied: no LM head saved), and transformers loads the export with no
  missing or unexpected keys."""
  root, _, _, _ = converted(FIRST)
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  saved = load_tensors(str(root / "hf"))
  assert "language_model.lm_head.weight" not in saved
  assert_same_tensors(saved, load_tensors(str(tmp_path / "back")))
  _, info = transformers.Blip2ForConditionalGeneration.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items() if k != "qformer.encoder.layer.1.crossattention."
                "attention.key.weight"},
     r"missing key 'qformer\.encoder\.layer\.1\.crossattention\.attention\.key\.weight'"),
    (lambda t: {**t, "qformer.encoder.layer.0.intermediate.dense.bias": torch.ones(48)},
     r"unexpected key 'qformer\.encoder\.layer\.0\.intermediate\.dense\.bias'"),
])
def test_strict_errors_name_the_key(converted, tmp_path, change, message):
  root, _, _, _ = converted(FIRST)
  assert_conversion_refuses(root / "hf", tmp_path, change, message)


def test_inputs_that_disagree_are_named(converted):
  _, hf_cfg, _, (family, config, params) = converted(FIRST)
  inputs = make_inputs(hf_cfg)
  with pytest.raises(PlaceholderMismatchError, match=r"hold 9 placeholder.* give 6 features"):
    forward_from_hf_inputs(family, config, params, {**inputs, "pixel_values":
                                                    inputs["pixel_values"][:2]})


def test_config_and_processor_settings(converted):
  """The config written back reads back the same; the processor config says how many image
  tokens `Blip2Processor` puts in front; chat mode needs the processor's files."""
  _, hf_cfg, _, (family, config, _) = converted("opt_depth3_freq2")
  assert family.config_from_hf(family.hf_config(config)) == config
  assert config.qformer.cross_layers == (0, 2) and config.tokens_per_image == 4
  with pytest.raises(FileNotFoundError, match="no tokenizer"):  # chat mode reads hf_extras/
    family.prompt_builder("unused", config)
  settings = family.hf_processor_config(config, "<image>")
  assert settings == {"processor_class": "Blip2Processor", "num_query_tokens": 4}
  assert processor(hf_cfg).num_query_tokens == settings["num_query_tokens"]

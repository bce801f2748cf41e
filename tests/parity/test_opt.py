"""OPT as a plain causal LM (`causal_lm` family): converted logits equal transformers' in float32
on left-padded rows, greedy generation equals its `generate`, and export round trips bit for bit.

Configs: tied embeddings of the blocks' width (the BLIP-2 release's OPTs), and untied
`word_embed_proj_dim` embeddings projected in and out (opt-350m's shape, pre-LN here) with
gelu and no biases.
"""

import numpy as np
import pytest
import torch
import transformers

from hf_files import assert_same_tensors, load_tensors
from hf_models import assert_logits_match, save
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.models.registry import forward_from_hf_inputs

CASES = {
    "tied": dict(),
    "proj_dim_untied_gelu_no_bias": dict(word_embed_proj_dim=24, tie_word_embeddings=False,
                                         activation_function="gelu", enable_bias=False),
}
N = 5  # generated tokens


def opt_config(**kw):
  base = dict(vocab_size=96, hidden_size=32, ffn_dim=48, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
              pad_token_id=1, bos_token_id=2, eos_token_id=2)
  return transformers.OPTConfig(**{**base, **kw})


def left_padded(vocab, lengths=(11, 8, 5), seed=0):
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.ones((len(lengths), t), np.int64)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    ids[row, t - n:] = rng.integers(3, vocab, n)
    mask[row, t - n:] = 1
  return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  built = {}

  def get(name):
    if name not in built:
      root = tmp_path_factory.mktemp("opt")
      torch.manual_seed(0)
      hf_dir = save(transformers.OPTForCausalLM(opt_config(**CASES[name])), str(root / "hf"))
      convert_hf(hf_dir, str(root / "mm"), progress=False)
      model = transformers.OPTForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
      built[name] = (root, model.eval(), load_checkpoint(str(root / "mm")))
    return built[name]

  return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(converted, name):
  """transformers computes OPT's positions itself (`cumsum(mask) * mask - 1`, + 2 rows)."""
  _, model, (family, config, params) = converted(name)
  assert family.name == "causal_lm" and config.model_type == "opt"
  inputs = left_padded(config.vocab_size)
  with torch.no_grad():
    ref = model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
  ours = forward_from_hf_inputs(family, config, params, inputs)
  assert_logits_match(f"opt/{name}", ours, ref, inputs["attention_mask"])


def test_greedy_generation_through_the_generate_command(converted):
  root, model, _ = converted("proj_dim_untied_gelu_no_bias")
  inputs = left_padded(96, seed=1)
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    ref = model.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, do_sample=False,
                         max_new_tokens=N, pad_token_id=1)
  np.testing.assert_array_equal(np.load(root / "ids.npy"), ref[:, inputs["input_ids"].shape[1]:])


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_round_trips_bit_for_bit(converted, tmp_path, name):
  root, _, _ = converted(name)
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(str(root / "hf")), load_tensors(str(tmp_path / "back")))
  _, info = transformers.OPTForCausalLM.from_pretrained(str(tmp_path / "back"),
                                                        output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("key,value", [("do_layer_norm_before", False),
                                       ("_remove_final_layer_norm", True),
                                       ("layer_norm_elementwise_affine", False)])
def test_unsupported_settings_are_named(key, value):
  """opt-350m's post-LN blocks and norms without parameters are refused, naming the setting."""
  from mmjax.decoders.config import DecoderConfig  # pylint: disable=g-import-not-at-top

  cfg = {**opt_config().to_dict(), key: value}
  with pytest.raises(ValueError, match=f"{key}={value}"):
    DecoderConfig.from_hf(cfg)

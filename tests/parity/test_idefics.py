"""IDEFICS (v1): converted logits equal transformers' in float32 on IdeficsProcessor's arrays.

Configs: with and without the Perceiver resampler, "float" and "vector" gates, q/k norms on and
off (gated layers and perceiver), cross_layer_interval 1, 2 and 3, tied embeddings, gelu and
quick_gelu towers. Inputs: several images per row, rows whose first tokens precede any image,
padding (all-zero) images, a text-only row, an end-of-sequence token (its followers see no image
until the next one), left padding; the additional vocabulary's ids throughout.
"""

import numpy as np
import pytest

from hf_models import assert_logits_match, converted_once
from idefics_models import (FAKE, IMAGE, idefics_config, load_reference, make_inputs,
                            reference_logits, tiny)
from mmjax import cli
from mmjax.models.registry import forward_from_hf_inputs
from mmjax.train import parts

CONFIGS = {
    "resampler_float_qk_norms_interval2": dict(resampler=True, qk_norm=True,
                                               perceiver_qk_norm=True),
    "raw_states_vector_interval1_quick_gelu": dict(gate="vector", interval=1, layers=3,
                                                   act="quick_gelu"),
    "resampler_vector_tied_interval3": dict(resampler=True, gate="vector", interval=3, layers=6,
                                            tied=True, latents=4),
}
FIRST = "resampler_float_qk_norms_interval2"
ROWS = [[2, "img", 3, "img", 2], [4, "img", 1, "eos", 2, "img", 1], [5], ["img", "img", 3]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  return converted_once(tmp_path_factory, "idefics", lambda name: idefics_config(**CONFIGS[name]),
                        tiny, load_reference)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_idefics_logits_match_transformers(converted, name):
  _, hf_cfg, model, (family, config, params) = converted(name)
  assert family.name == "idefics"
  inputs = make_inputs(hf_cfg, ROWS)
  assert np.isin([FAKE, IMAGE], inputs["input_ids"]).all()  # the additional vocabulary is read
  ref = reference_logits(model, inputs)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  assert ours.shape == ref.shape == (*inputs["input_ids"].shape, hf_cfg.vocab_size + 2)
  assert_logits_match(f"idefics/{name}", ours, ref, inputs["attention_mask"])


def test_text_only_batch_matches_transformers(converted):
  """No `pixel_values`: run as the processor's arrays of text-only prompts (one zero image no
  token sees), which transformers needs; the gated layers' MLPs still apply."""
  _, hf_cfg, model, (family, config, params) = converted(FIRST)
  inputs = make_inputs(hf_cfg, [[6], [2, "eos", 3]], seed=1)
  ref = reference_logits(model, inputs)
  text = {k: inputs[k] for k in ("input_ids", "attention_mask")}
  ours = forward_from_hf_inputs(family, config, params, text)
  assert_logits_match("idefics/text_only", ours, ref, inputs["attention_mask"])


def test_images_reach_only_the_tokens_after_them(converted):
  """Other pixels change the logits of tokens that follow an image and no others (tokens before
  any image, left padding aside), through the cross-attention and the padding image not at all."""
  _, hf_cfg, _, (family, config, params) = converted(FIRST)
  inputs = make_inputs(hf_cfg, [[3, "img", 3], [4]], seed=2)
  other = {**inputs, "pixel_values": inputs["pixel_values"] + 1.0}
  a = forward_from_hf_inputs(family, config, params, inputs)
  b = forward_from_hf_inputs(family, config, params, other)
  seen = np.cumsum(inputs["image_attention_mask"].any(-1), axis=1) > 0  # [B, T]
  assert np.abs(a - b)[seen].max() > 1e-3
  np.testing.assert_array_equal(a[~seen], b[~seen])


def test_logits_command_takes_the_processor_arrays(converted):
  root, hf_cfg, model, _ = converted(FIRST)
  inputs = make_inputs(hf_cfg, [["img", 2], [1, "img", 4, "img"]], seed=3)
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["logits", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "logits.npy")]) == 0
  ours = np.load(root / "logits.npy")
  assert ours.dtype == np.float32
  assert_logits_match("idefics/logits_cli", ours, reference_logits(model, inputs),
                      inputs["attention_mask"])


def test_inputs_that_disagree_are_named(converted):
  _, hf_cfg, _, (family, config, params) = converted(FIRST)
  inputs = make_inputs(hf_cfg, [[2, "img", 2]])
  run = lambda **kw: forward_from_hf_inputs(family, config, params, {**inputs, **kw})
  with pytest.raises(KeyError, match="image_attention_mask"):
    forward_from_hf_inputs(family, config, params,
                           {k: v for k, v in inputs.items() if k != "image_attention_mask"})
  with pytest.raises(ValueError, match=r"image_attention_mask \(1, 7, 1\) must be \[batch, len"):
    run(image_attention_mask=inputs["image_attention_mask"][:, :-1])
  with pytest.raises(ValueError, match=r"\[batch, images, channels, height, width\]"):
    run(pixel_values=inputs["pixel_values"][0])
  with pytest.raises(ValueError, match="images must be"):
    run(pixel_values=inputs["pixel_values"][..., :8])


@pytest.mark.parametrize("name", [FIRST, "resampler_vector_tied_interval3"])
def test_trainable_parts_split_the_decoupled_rows(converted, name):
  """Flamingo's recipe: the additional vocabulary's rows and the gated layers train while the
  base vocabulary and the language model stay frozen."""
  _, _, _, (family, config, params) = converted(name)
  paths = lambda tree: sorted("/".join(p) for p in _leaf_paths(tree))
  train, frozen = parts.split(params, ["additional_vocab"], family.parts)
  expected = ["decoder/embed_additional/embedding"] + \
      ([] if config.decoder.tie_embeddings else ["decoder/lm_head_additional/kernel"])
  assert paths(train) == expected
  assert "decoder/embed/embedding" in paths(frozen)
  train, frozen = parts.split(params, ["gated_cross"], family.parts)
  assert paths(train) and all("/gated_cross_" in p for p in paths(train))
  assert not any("/gated_cross_" in p for p in paths(frozen))
  lm, _ = parts.split(params, ["language_model"], family.parts)
  assert "decoder/embed/embedding" in paths(lm) and not any(
      "additional" in p or "gated_cross" in p for p in paths(lm))


def _leaf_paths(tree, path=()):
  for key, node in tree.items():
    if isinstance(node, dict):
      yield from _leaf_paths(node, (*path, key))
    else:
      yield (*path, key)

"""Idefics2: converted logits equal transformers' in float32 on Idefics2Processor's arrays, greedy
generation equals its `generate`, and conversion round trips bit for bit.

Configs: perceiver depth 1-3 with grouped-query (4 heads / 2 kv), one-kv-head and plain heads,
tied and untied embeddings, Mistral and Llama decoders, tower grids of 4 and 5 patches a side.
Inputs: images of several sizes in one batch (padded bottom-right, so patch masks and fractional
positions differ per image, and sizes that are not whole patches), several images a row, rows
with fewer images (all-zero padding images), a text-only row, left padding; with and without
`pixel_attention_mask`.
"""


import numpy as np
import pytest
import torch
import transformers

from hf_files import assert_conversion_refuses, assert_same_tensors, load_tensors
from hf_models import assert_logits_match, cli_logits, converted_once, reference_logits
from idefics2_models import (IMAGE, hf_greedy, idefics2_config, load_reference, make_inputs,
                             tiny)
from mmjax import cli
from mmjax.convert.exporter import export_hf
from mmjax.encoders.fractional_positions import bucket_boundaries, bucket_table
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs

CONFIGS = {
    "gqa_depth2_grid4": dict(),
    "mha_depth1_grid5_tied_llama": dict(image_size=30, patch=6, depth=1, heads=2, kv_heads=2,
                                        head_dim=16, latents=4, tied=True, text_type="llama"),
    "kv1_depth3_grid4_gelu": dict(depth=3, heads=4, kv_heads=1, latents=2,
                                  vision_act="gelu"),
}
FIRST = "gqa_depth2_grid4"
# Original image sizes (h, w) per row; the processor resizes to a longest side of image_size.
ROWS = [[(20, 30)], [], [(13, 40), (32, 32), (9, 17)], [(30, 18), (32, 32)]]
N = 6  # generated tokens


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  return converted_once(tmp_path_factory, "idefics2", lambda name: idefics2_config(**CONFIGS[name]),
                        tiny, load_reference)


def test_first_config_through_the_logits_command(converted):
  """`mmjax logits --inputs` on the processor's arrays: the first config's parity figure."""
  root, hf_cfg, model, _ = converted(FIRST)
  inputs = make_inputs(hf_cfg, ROWS)
  mask = inputs["pixel_attention_mask"]
  assert (mask.sum((2, 3)) > 0).sum() == 6 and mask.shape[1] == 3  # 6 real images, 6 padding
  assert not np.all(mask[mask.sum((2, 3)) > 0])  # some images do not fill the padded size
  assert_logits_match(f"idefics2/{FIRST}", cli_logits(str(root / "mm"), inputs, root),
                      reference_logits(model, inputs), inputs["attention_mask"])


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - {FIRST}))
def test_logits_match_transformers(converted, name):
  _, hf_cfg, model, (family, config, params) = converted(name)
  assert family.name == "idefics2"
  inputs = make_inputs(hf_cfg, ROWS, seed=1)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  ref = reference_logits(model, inputs)
  assert ours.shape == ref.shape == (*inputs["input_ids"].shape, hf_cfg.text_config.vocab_size)
  assert_logits_match(f"idefics2/{name}", ours, ref, inputs["attention_mask"])


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - {FIRST}))
def test_without_pixel_attention_mask(converted, name):
  """Every pixel counts as real (the padding too), as transformers takes a missing mask; the
  logits differ from the masked run's. (The inputs of `test_logits_match_transformers`: the
  compiled forward is reused.)"""
  _, hf_cfg, model, (family, config, params) = converted(name)
  inputs = make_inputs(hf_cfg, ROWS, seed=1)
  masked = forward_from_hf_inputs(family, config, params, inputs)
  del inputs["pixel_attention_mask"]
  ours = forward_from_hf_inputs(family, config, params, inputs)
  assert np.abs(ours - masked).max() > 1e-3
  assert_logits_match(f"idefics2/{name}/no_pixel_attention_mask", ours,
                      reference_logits(model, inputs), inputs["attention_mask"])


def test_greedy_generation_through_the_generate_command(converted):
  """`mmjax generate --inputs`: greedy ids equal transformers' `generate` (images only in the
  prefill; new tokens are text)."""
  root, hf_cfg, model, _ = converted("kv1_depth3_grid4_gelu")
  inputs = make_inputs(hf_cfg, ROWS[1:], seed=3)
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  np.testing.assert_array_equal(np.load(root / "ids.npy"), hf_greedy(model, inputs, N))


def test_inputs_that_disagree_are_named(converted):
  """Checked on the host before anything runs."""
  _, hf_cfg, _, (family, config, params) = converted(FIRST)
  inputs = make_inputs(hf_cfg, [[(20, 30)]])
  run = lambda **kw: forward_from_hf_inputs(family, config, params, {**inputs, **kw})
  ids = inputs["input_ids"].copy()
  ids[0, -1] = IMAGE
  with pytest.raises(PlaceholderMismatchError, match=r"hold 4 placeholder.* give 3 features"):
    run(input_ids=ids)
  with pytest.raises(PlaceholderMismatchError, match="give 0 features"):  # all-zero: padding
    run(pixel_values=np.zeros_like(inputs["pixel_values"]))
  with pytest.raises(ValueError, match=r"pixel_attention_mask \(1, 1, 20\) must be"):
    run(pixel_attention_mask=inputs["pixel_attention_mask"][..., 0])
  with pytest.raises(ValueError, match=r"\[batch, images, channels, height, width\]"):
    run(pixel_values=inputs["pixel_values"][0])


def test_example_processor_inputs_fit_the_adapter(converted):
  """What `mmjax aot --step generate` feeds the adapter: one whole image per row."""
  _, _, _, (family, config, _) = converted(FIRST)
  example = family.example_processor_inputs(config, 2, config.tokens_per_image + 2)
  ids = example["input_ids"]
  images, _ = family.generation_adapter(config).prepare_inputs(
      ids, np.ones_like(ids), family.generation_pixels(config, example), None)
  assert images["pixel_values"].shape == (2, 32, 32, 3) and images["patch_mask"].all()
  with pytest.raises(ValueError, match="cannot hold"):
    family.example_processor_inputs(config, 1, 2)


def test_saved_layout_round_trips_bit_for_bit(converted, tmp_path):
  """HF -> mmjax -> HF (untied: lm_head saved), and transformers loads the export cleanly."""
  root, _, _, _ = converted(FIRST)
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  saved = load_tensors(str(root / "hf"))
  assert "lm_head.weight" in saved
  assert_same_tensors(saved, load_tensors(str(tmp_path / "back")))
  _, info = transformers.Idefics2ForConditionalGeneration.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items()
                if k != "model.connector.modality_projection.up_proj.weight"},
     "missing key 'model.connector.modality_projection.up_proj.weight'"),
    (lambda t: {**t, "model.connector.perceiver_resampler.layers.2.norm.weight": torch.ones(32)},
     "unexpected key 'model.connector.perceiver_resampler.layers.2.norm.weight'"),
])
def test_strict_errors_name_the_key(converted, tmp_path, change, message):
  root, _, _, _ = converted(FIRST)
  assert_conversion_refuses(root / "hf", tmp_path, change, message)


def test_fractional_buckets_equal_torch():
  """The boundaries are torch's CPU `arange` bit for bit (not the nearest float32 of k/grid,
  which differs for grids 19, 20, ...), and the buckets `torch.bucketize`'s, for every valid
  count (0 included) of grids up to 70 (Idefics2-8B's 980 / 14)."""
  for grid in range(1, 71):
    boundaries = torch.arange(1 / grid, 1.0, 1 / grid)
    np.testing.assert_array_equal(bucket_boundaries(grid), boundaries.numpy())
    length = grid + 2  # images larger than image_size too
    counts = torch.arange(length + 1)
    fractions = torch.arange(length, dtype=torch.float32)[None] * (1.0 / counts)[:, None]
    expected = torch.bucketize(torch.clamp(fractions, max=1 - 1e-6), boundaries, right=True)
    np.testing.assert_array_equal(bucket_table(grid, length), expected.numpy())

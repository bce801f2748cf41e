"""LLaVA-OneVision: converted logits equal transformers' in float32 on LlavaOnevisionProcessor's
arrays (AnyRes images alone in their rows, `anyres_max_N` shrinking large grids, rows of several
images without AnyRes, videos pooled 2x2, text-only rows, left padding), across pinpoints, feature
layers and selection, towers and decoders; greedy generation equals `generate`; export writes the
saved tensors back bit for bit. `mmjax logits` and `mmjax generate --inputs` take the processor's
arrays (one config each: the API runs the same code)."""

import dataclasses

import numpy as np
import pytest
import torch
import transformers

from hf_files import assert_same_tensors, load_tensors, rewrite
from hf_models import (assert_logits_match, cli_logits, clip_vision_config, converted_once,
                       reference_logits, siglip_vision_config, text_config)
from llava_onevision_models import (IMAGE, VIDEO, load_reference, make_inputs, onevision_config,
                                    tiny)
from mmjax import cli
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs

N = 6  # new tokens of the greedy comparisons
# name -> (onevision_config kwargs, image sizes (h, w) per row, video frames per row)
CASES = {
    # the released setting (SigLIP, 'full', last layer) with a budget of one tile: large grids
    # shrink; a row of two images, a text-only row, videos
    "siglip_qwen2_max1": (
        dict(vision_aspect_ratio="anyres_max_1"),
        [[(20, 70)], [], [(50, 30), (7, 333)], [(96, 90)]], [0, 2, 0, 2]),
    # CLIP without its class token, a feature layer list, other pinpoints, extreme aspects
    "clip_llama_layers_other_pinpoints": (
        dict(vision=clip_vision_config(num_hidden_layers=2), text=text_config("llama"),
             vision_feature_layer=[-1, -3, 0], vision_feature_select_strategy="default",
             image_grid_pinpoints=[[32, 64], [64, 32], [64, 64], [96, 96]],
             vision_aspect_ratio="anyres_max_2"),
        [[(1, 500)], [(500, 1), (64, 64)], [(90, 95)]], [3, 0, 0]),
    # tied embeddings, a budget of four tiles, 3x3 features per tile (odd: ceil(3 / 2) pooled)
    "siglip_qwen2_tied_odd_grid": (
        dict(vision=siglip_vision_config(image_size=24, patch_size=8),
             text=text_config("qwen2", tie_word_embeddings=True),
             vision_feature_layer=-2, vision_aspect_ratio="anyres_max_4",
             image_grid_pinpoints=[[24, 24], [24, 48], [48, 24], [48, 72], [72, 72]]),
        [[(333, 7)], [(100, 120)], [(45, 70), (30, 30), (80, 20)]], [0, 1, 0]),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return converted_once(tmp_path_factory, "onevision", lambda name: onevision_config(**CASES[name][0]),
                        tiny, load_reference)


def _inputs(name, hf_cfg, seed=0):
  _, rows, videos = CASES[name]
  return make_inputs(hf_cfg, rows, videos, seed=seed)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(built, name):
  root, hf_cfg, model, (family, config, params) = built(name)
  assert family.name == "llava_onevision"
  inputs = _inputs(name, hf_cfg)
  if name == "siglip_qwen2_max1":  # `mmjax logits` on the processor's arrays (an .npz)
    ours = cli_logits(str(root / "mm"), inputs, root)
  else:
    ours = forward_from_hf_inputs(family, config, params, inputs)
  assert_logits_match(f"llava_onevision/{name}", ours, reference_logits(model, inputs),
                      inputs["attention_mask"])


def test_the_cases_cover_every_layout(built):
  """The cases hold what they claim: a grid shrunk by anyres_max, rows of several images, videos
  of odd and even feature grids."""
  shrunk = 0
  for name, (_, rows, videos) in CASES.items():
    _, hf_cfg, _, (_, config, _) = built(name)
    for row in rows:
      for h, w in row:
        if len(row) == 1:
          unlimited = dataclasses.replace(config, vision_aspect_ratio="anyres_max_999")
          shrunk += config.tokens_for(h, w) < unlimited.tokens_for(h, w)
    assert any(len(row) > 1 for row in rows) and any(videos)
  assert shrunk >= 3


def test_generate_command_equals_transformers_generate(built, tmp_path):
  """`mmjax generate --inputs` on every array the processor makes (images alone and sharing a
  row, videos, a text-only row): transformers' greedy ids."""
  name = "siglip_qwen2_max1"
  root, hf_cfg, model, _ = built(name)
  inputs = _inputs(name, hf_cfg, seed=1)
  assert {"batch_num_images", "pixel_values_videos"} <= set(inputs)
  np.savez(tmp_path / "inputs.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(tmp_path / "inputs.npz"), "--out", str(tmp_path / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    expected = model.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, do_sample=False,
                              max_new_tokens=N, pad_token_id=0)
  np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"),
                                expected[:, inputs["input_ids"].shape[1]:].numpy())


def test_export_writes_the_saved_tensors_back_bit_for_bit(built, tmp_path):
  """The tied case: no lm_head in the files, and none written back."""
  root, _, _, _ = built("siglip_qwen2_tied_odd_grid")
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(str(root / "hf")), load_tensors(str(tmp_path / "back")))
  # the very tensors save_pretrained wrote (so from_pretrained loads them as it loaded those)
  back = transformers.LlavaOnevisionConfig.from_pretrained(str(tmp_path / "back"))
  saved = transformers.LlavaOnevisionConfig.from_pretrained(str(root / "hf"))
  for key in ("image_grid_pinpoints", "vision_aspect_ratio", "image_token_id", "video_token_id",
              "vision_feature_layer", "vision_feature_select_strategy", "tie_word_embeddings"):
    assert getattr(back, key) == getattr(saved, key), key


def test_missing_image_newline_is_named(built, tmp_path):
  root, _, _, _ = built("siglip_qwen2_max1")
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  for f in (root / "hf").iterdir():
    (hf_dir / f.name).write_bytes(f.read_bytes())
  rewrite(str(hf_dir), lambda t: {k: v for k, v in t.items() if "image_newline" not in k})
  with pytest.raises(ConversionError, match="image_newline"):
    convert_hf(str(hf_dir), str(tmp_path / "mm"), progress=False)


def test_inputs_that_disagree_are_named(built):
  name = "siglip_qwen2_max1"
  _, hf_cfg, _, (family, config, params) = built(name)
  inputs = _inputs(name, hf_cfg)
  run = lambda **kw: forward_from_hf_inputs(family, config, params, {**inputs, **kw})
  for token in (IMAGE, VIDEO):
    ids = inputs["input_ids"].copy()
    ids[0, -1] = token  # one placeholder too many
    with pytest.raises(PlaceholderMismatchError, match=f"id {token}"):
      run(input_ids=ids)
  with pytest.raises(ValueError, match=r"batch_num_images \[1, 1\] does not count the 4 images"):
    run(batch_num_images=np.array([1, 1]))
  with pytest.raises(PlaceholderMismatchError):  # every image alone: AnyRes for the pair too
    run(batch_num_images=None)
  with pytest.raises(KeyError, match="image_sizes"):
    run(image_sizes=None)
  with pytest.raises(ValueError, match=r"\[videos, frames, channels, height, width\]"):
    run(pixel_values_videos=inputs["pixel_values_videos"][0])


def test_example_processor_inputs_fit_the_adapter(built):
  """What `mmjax aot --step generate` feeds the adapter: one whole-grid image per row."""
  _, _, _, (family, config, params) = built("siglip_qwen2_tied_odd_grid")
  h, w = config.grid_pinpoints[0]
  example = family.example_processor_inputs(config, 2, config.tokens_for(h, w) + 3)
  ids = example["input_ids"]
  images, _ = family.generation_adapter(config).prepare_inputs(
      ids, np.ones_like(ids), family.generation_pixels(config, example), None)
  assert images["image_index"].shape == (2 * config.tokens_for(h, w), 4)
  assert images["video_index"].shape == (0, 4)
  with pytest.raises(ValueError, match="cannot hold"):
    family.example_processor_inputs(config, 1, 4)
  with pytest.raises(ValueError, match="unknown inputs"):
    family.generation_adapter(config).prepare_inputs(
        ids, np.ones_like(ids), {**example, "image_sizes_videos": np.zeros((1, 2))}, None)

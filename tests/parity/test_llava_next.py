"""LLaVA-NeXT: converted logits equal transformers' in float32 across grid pinpoints, feature
layers and selection, towers and decoders, on LlavaNextProcessor's arrays: several images of
different sizes (extreme aspect ratios among them) in a batch, left padding, a text-only row."""

import numpy as np
import pytest

from hf_models import TOLERANCE, cli_logits, max_diff, record, reference_logits, siglip_vision_config
from hf_models import clip_vision_config, text_config
from llava_next_models import IMAGE, llava_next_config, load_reference, make_inputs, tiny
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs

# name -> (vision config, text config, llava_next kwargs, image sizes (h, w) per row)
CASES = {
    "clip_llama_layer-2_default": (
        clip_vision_config(), text_config("llama"), dict(),
        [[(20, 70)], [], [(50, 30), (7, 333)]]),
    "clip_mistral_layer_list_other_pinpoints": (
        clip_vision_config(num_hidden_layers=2), text_config("mistral"),
        dict(vision_feature_layer=[-1, -3, 0],
             image_grid_pinpoints=[[32, 32], [64, 96], [96, 64], [32, 128]]),
        [[(1, 500), (500, 1)], [(64, 64)], []]),
    "siglip_qwen2_full_tied": (
        siglip_vision_config(), text_config("qwen2", tie_word_embeddings=True),
        dict(vision_feature_layer=-1, vision_feature_select_strategy="full",
             image_grid_pinpoints=[[64, 64], [32, 128], [128, 32]]),
        [[(333, 7)], [(45, 70), (30, 30)]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_llava_next_logits_match_transformers(name, tmp_path):
  vision, text, kw, rows = CASES[name]
  hf_cfg = llava_next_config(vision, text, **kw)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == "llava_next"

  inputs = make_inputs(hf_cfg, rows)
  ref = reference_logits(load_reference(hf_dir), inputs)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  mask = inputs["attention_mask"]
  diff = max_diff(ours, ref, mask)
  record(f"llava_next/{name}", diff)
  assert diff <= TOLERANCE, diff
  np.testing.assert_array_equal(ours.argmax(-1)[mask == 1], ref.argmax(-1)[mask == 1])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("llava_next")
  hf_cfg = llava_next_config()
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=3)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(root / "mm"), "--quiet"]) == 0
  return root, hf_cfg, hf_dir, str(root / "mm")


def test_logits_command_takes_the_processor_arrays(converted):
  root, hf_cfg, hf_dir, ckpt = converted
  inputs = make_inputs(hf_cfg, [[(40, 90)], [(90, 40), (3, 3)]], seed=4)
  ours = cli_logits(ckpt, inputs, root)
  assert ours.shape[-1] == hf_cfg.text_config.vocab_size
  diff = max_diff(ours, reference_logits(load_reference(hf_dir), inputs), inputs["attention_mask"])
  record("llava_next/logits_cli", diff)
  assert diff <= TOLERANCE, diff


def test_inputs_that_disagree_are_named(converted):
  _, hf_cfg, _, ckpt = converted
  family, config, params = load_checkpoint(ckpt)
  inputs = make_inputs(hf_cfg, [[(20, 70)]])
  run = lambda **kw: forward_from_hf_inputs(family, config, params, {**inputs, **kw})
  ids = inputs["input_ids"].copy()
  ids[0, -1] = IMAGE  # one placeholder too many
  with pytest.raises(PlaceholderMismatchError, match=r"hold \d+ placeholder"):
    run(input_ids=ids)
  with pytest.raises(PlaceholderMismatchError):  # another size lays out another feature count
    run(image_sizes=np.array([[70, 20]]))
  with pytest.raises(KeyError, match="image_sizes"):
    forward_from_hf_inputs(family, config, params,
                           {k: v for k, v in inputs.items() if k != "image_sizes"})
  with pytest.raises(ValueError, match=r"\[images, tiles, channels, height, width\]"):
    run(pixel_values=inputs["pixel_values"][0])
  with pytest.raises(ValueError, match=r"of size \(20, 70\) takes 4 tiles .* holds 2"):
    run(pixel_values=inputs["pixel_values"][:, :2])


def test_configs_transformers_cannot_run_are_named():
  """A pinpoint that is no multiple of the tile (transformers' grid view fails on it) and CLIP
  with 'full' selection (its class token breaks the patch grid; transformers raises too)."""
  from mmjax.models.llava_next import LlavaNextConfig

  with pytest.raises(ValueError, match=r"image_grid_pinpoint \[48, 64\].*image_size 32"):
    LlavaNextConfig.from_hf(llava_next_config(image_grid_pinpoints=[[48, 64]]).to_dict())
  with pytest.raises(ValueError, match="class token.*'default'"):
    LlavaNextConfig.from_hf(llava_next_config(vision_feature_select_strategy="full").to_dict())

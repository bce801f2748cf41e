"""Pixtral (`llava` with a Pixtral tower) and Mistral3: converted logits equal transformers' in
float32 on PixtralProcessor's arrays: several images of different sizes per row (extreme aspect
ratios among them) packed into one tower sequence, with and without the patch merger, several
feature layers and decoders, left padding and a text-only row."""

import numpy as np
import pytest

from hf_models import TOLERANCE, cli_logits, max_diff, record, reference_logits, text_config
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs
from pixtral_models import (IMAGE, load_reference, make_inputs, mistral3_config, pixtral_config,
                            pixtral_vision_config, tiny)

# name -> (family, config, image sizes (h, w) per row, before the processor resizes them)
CASES = {
    "pixtral_mistral_last_layer": (
        "pixtral", lambda: pixtral_config(),
        [[(20, 70)], [], [(50, 30), (7, 333)]]),
    "pixtral_llama_layer_list_bias": (
        "pixtral", lambda: pixtral_config(
            pixtral_vision_config(hidden_act="silu", num_attention_heads=4),
            text_config("llama"), vision_feature_layer=[-2, 0], multimodal_projector_bias=True),
        [[(333, 7), (64, 64)], [(3, 2)], []]),
    "mistral3_merge2": (
        "mistral3", lambda: mistral3_config(),
        [[(20, 70), (333, 7)], [], [(48, 48)]]),
    "mistral3_merge3_layer-2_tied": (
        "mistral3", lambda: mistral3_config(
            text=text_config("mistral", tie_word_embeddings=True, rms_norm_eps=1e-5),
            spatial_merge_size=3, vision_feature_layer=-2),
        [[(90, 40)], [(30, 30), (13, 100)]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pixtral_logits_match_transformers(name, tmp_path):
  family_name, make_config, rows = CASES[name]
  hf_cfg = make_config()
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == family_name

  inputs = make_inputs(hf_cfg, rows)
  ref = reference_logits(load_reference(hf_dir, hf_cfg), inputs)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  mask = inputs["attention_mask"]
  diff = max_diff(ours, ref, mask)
  record(f"{family_name}/{name}", diff)
  assert diff <= TOLERANCE, diff
  np.testing.assert_array_equal(ours.argmax(-1)[mask == 1], ref.argmax(-1)[mask == 1])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("mistral3")
  hf_cfg = mistral3_config()
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=3)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(root / "mm"), "--quiet"]) == 0
  return root, hf_cfg, hf_dir, str(root / "mm")


def test_logits_command_takes_the_processor_arrays(converted):
  root, hf_cfg, hf_dir, ckpt = converted
  inputs = make_inputs(hf_cfg, [[(40, 90)], [(90, 40), (3, 3)]], seed=4)
  ours = cli_logits(ckpt, inputs, root)
  assert ours.shape[-1] == hf_cfg.text_config.vocab_size
  ref = reference_logits(load_reference(hf_dir, hf_cfg), inputs)
  diff = max_diff(ours, ref, inputs["attention_mask"])
  record("mistral3/logits_cli", diff)
  assert diff <= TOLERANCE, diff


def test_inputs_that_disagree_are_named(converted):
  _, hf_cfg, _, ckpt = converted
  family, config, params = load_checkpoint(ckpt)
  inputs = make_inputs(hf_cfg, [[(20, 70)]])  # resized to 16 x 48: 2 x 6 merged tokens
  run = lambda **kw: forward_from_hf_inputs(family, config, params, {**inputs, **kw})
  ids = inputs["input_ids"].copy()
  ids[0, -1] = IMAGE  # one placeholder too many
  with pytest.raises(PlaceholderMismatchError, match=r"hold 13 placeholder.* give 12 features"):
    run(input_ids=ids)
  with pytest.raises(PlaceholderMismatchError, match="give 6 features"):  # another size
    run(image_sizes=np.array([[8, 48]]))
  with pytest.raises(ValueError, match=r"image_sizes \(16, 52\) does not fit"):
    run(image_sizes=np.array([[16, 52]]))
  with pytest.raises(ValueError, match=r"\[images, channels, height, width\]"):
    run(pixel_values=inputs["pixel_values"][0])


def test_configs_transformers_cannot_run_are_named():
  """Pixtral's class-token-free features with 'default' selection (transformers' split of the
  features fails) and Mistral3 with several feature layers (its norm takes one layer's width)."""
  from mmjax.models.pixtral import Mistral3Config, PixtralConfig

  with pytest.raises(ValueError, match="no class token.*'full'"):
    PixtralConfig.from_hf(pixtral_config(vision_feature_select_strategy="default").to_dict())
  with pytest.raises(ValueError, match=r"one vision feature layer, got \[-1, -2\]"):
    Mistral3Config.from_hf(mistral3_config(vision_feature_layer=[-1, -2]).to_dict())

"""Fuyu: converted logits equal transformers' in float32 on FuyuProcessor's arrays: patch grids
of several shapes (one row, one column, square), left padding, a text-only row, Persimmon
decoders with and without q/k LayerNorm."""

import numpy as np
import pytest

from fuyu_models import SPEAKER, fuyu_config, load_reference, make_inputs, tiny
from hf_models import TOLERANCE, cli_logits, max_diff, record, reference_logits, text_config
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs

# name -> (config, patch grid (rows, columns) per row, None: text only)
CASES = {
    "qk_layernorm_grids_2x3_text_1x5": (lambda: fuyu_config(), [(2, 3), None, (1, 5)]),
    "no_qk_norm_tied_quarter_rope_3x3_1x1": (
        lambda: fuyu_config(text_config(
            "persimmon", qk_layernorm=False, tie_word_embeddings=True,
            rope_parameters=dict(rope_type="default", rope_theta=25000.0,
                                 partial_rotary_factor=0.25))),
        [(3, 3), (1, 1)]),
    "patch3_four_channels_column_6x1_row_1x7": (
        lambda: fuyu_config(patch_size=3, num_channels=4), [(6, 1), None, (1, 7)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fuyu_logits_match_transformers(name, tmp_path):
  make_config, grids = CASES[name]
  hf_cfg = make_config()
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == "fuyu" and config.decoder.norm == "layer"

  inputs = make_inputs(hf_cfg, grids)
  ref = reference_logits(load_reference(hf_dir), inputs)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  mask = inputs["attention_mask"]
  diff = max_diff(ours, ref, mask)
  record(f"fuyu/{name}", diff)
  assert diff <= TOLERANCE, diff
  np.testing.assert_array_equal(ours.argmax(-1)[mask == 1], ref.argmax(-1)[mask == 1])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("fuyu")
  hf_cfg = fuyu_config()
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=3)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(root / "mm"), "--quiet"]) == 0
  return root, hf_cfg, hf_dir, str(root / "mm")


def test_logits_command_takes_the_processor_arrays(converted):
  root, hf_cfg, hf_dir, ckpt = converted
  inputs = make_inputs(hf_cfg, [(2, 2), (1, 3)], seed=4)
  ref = reference_logits(load_reference(hf_dir), inputs)
  # `pixel_values` is the same array under the processor's non-legacy name.
  for name in ("image_patches", "pixel_values"):
    given = {**inputs, name: inputs["image_patches"]}
    if name != "image_patches":
      del given["image_patches"]
    diff = max_diff(cli_logits(ckpt, given, root), ref, inputs["attention_mask"])
    record(f"fuyu/logits_cli_{name}", diff)
    assert diff <= TOLERANCE, diff


def test_inputs_that_disagree_are_named(converted):
  _, hf_cfg, _, ckpt = converted
  family, config, params = load_checkpoint(ckpt)
  inputs = make_inputs(hf_cfg, [(2, 2)])
  short = {**inputs, "image_patches": inputs["image_patches"][:3]}
  with pytest.raises(PlaceholderMismatchError, match=f"id {SPEAKER}"):
    forward_from_hf_inputs(family, config, params, short)
  wide = {**inputs, "image_patches": np.zeros((4, 13), np.float32)}
  with pytest.raises(ValueError, match=r"image_patches must be \[patches, 12\]"):
    forward_from_hf_inputs(family, config, params, wide)
  both = {**inputs, "pixel_values": inputs["image_patches"]}
  with pytest.raises(ValueError, match="once"):
    forward_from_hf_inputs(family, config, params, both)

"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: converted logits equal transformers' in float32.

Cases cover different grids, two images in one row, videos (temporal patches, Qwen2.5-VL's
seconds-per-grid, Qwen3-VL's per-frame timestamps), left padding, text-only rows, window
attention with full-attention layers, DeepStack, interpolated position tables, tied heads.
"""

import numpy as np
import pytest

from hf_models import TOLERANCE, max_diff, record, save
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.registry import forward_from_hf_inputs
from qwen_vl_models import build, make_inputs, qwen_vl_config, reference_logits

IMG = lambda h, w, t=1: ("image", (t, h, w))
VID = lambda t, h, w: ("video", (t, h, w))

# name -> (kind, config kwargs, rows)
CASES = {
    "qwen2_vl_two_images_left_padded": (
        "qwen2_vl", {}, [[3, IMG(4, 6), 2, IMG(2, 2)], [2, IMG(6, 4)], [5]]),
    "qwen2_vl_video_and_image_tied": (
        "qwen2_vl", dict(tied=True), [[2, VID(2, 4, 4), 1, IMG(2, 4)], [4, IMG(4, 2)]]),
    "qwen2_5_vl_windows_two_images": (
        "qwen2_5_vl", {}, [[2, IMG(8, 12), 3, IMG(6, 4)], [1, IMG(4, 4)]]),
    "qwen2_5_vl_video_seconds_tied": (
        "qwen2_5_vl", dict(tied=True, vision=dict(fullatt_block_indexes=[0, 2])),
        [[2, VID(3, 4, 6)], [3, IMG(10, 6), 1]]),
    "qwen3_vl_deepstack_two_images": (
        "qwen3_vl", {}, [[2, IMG(6, 8), 2, IMG(2, 2)], [1, IMG(4, 4)]]),
    "qwen3_vl_video_timestamps_tied": (
        "qwen3_vl", dict(tied=True, vision=dict(deepstack_visual_indexes=[1])),
        [[2, VID(2, 4, 4), IMG(4, 6)], [6]]),
}


def _convert(kind, hf_cfg, tmp_path, seed=0):
  model = build(kind, hf_cfg)
  hf_dir = save(model, str(tmp_path / "hf"), seed=seed)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  return model, hf_dir


@pytest.mark.parametrize("name", sorted(CASES))
def test_qwen_vl_logits_match_transformers(name, tmp_path):
  kind, kw, rows = CASES[name]
  hf_cfg = qwen_vl_config(kind, **kw)
  model, _ = _convert(kind, hf_cfg, tmp_path)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == kind and config.decoder.tie_embeddings == bool(kw.get("tied"))
  inputs = make_inputs(kind, hf_cfg, rows)
  ref = reference_logits(model, inputs)
  ours = forward_from_hf_inputs(family, config, params, inputs)
  mask = inputs["attention_mask"]
  diff = max_diff(ours, ref, mask)
  record(f"qwen_vl/{name}", diff)
  assert diff <= TOLERANCE, diff
  np.testing.assert_array_equal(ours.argmax(-1)[mask == 1], ref.argmax(-1)[mask == 1])


def test_logits_command_takes_processor_arrays(tmp_path):
  """`mmjax logits` on an npz of processor arrays, mm_token_type_ids left out (derived)."""
  kind = "qwen2_5_vl"
  hf_cfg = qwen_vl_config(kind)
  model = build(kind, hf_cfg)
  hf_dir = save(model, str(tmp_path / "hf"), seed=5)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 0
  inputs = make_inputs(kind, hf_cfg, [[1, IMG(4, 4), VID(2, 4, 4)], [3, IMG(2, 6)]], seed=6)
  ref = reference_logits(model, inputs)
  np.savez(tmp_path / "in.npz", **{k: v for k, v in inputs.items() if k != "mm_token_type_ids"})
  assert cli.main(["logits", "--checkpoint", str(tmp_path / "mm"), "--inputs",
                   str(tmp_path / "in.npz"), "--out", str(tmp_path / "logits.npy")]) == 0
  ours = np.load(tmp_path / "logits.npy")
  diff = max_diff(ours, ref, inputs["attention_mask"])
  record("qwen_vl/logits_cli", diff)
  assert diff <= TOLERANCE, diff


def test_placeholder_and_grid_mismatches_are_named(tmp_path):
  kind = "qwen2_vl"
  hf_cfg = qwen_vl_config(kind)
  _convert(kind, hf_cfg, tmp_path)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  inputs = make_inputs(kind, hf_cfg, [[2, IMG(4, 4)]])
  bad = dict(inputs, input_ids=np.where(inputs["input_ids"] == 5, 120, inputs["input_ids"]))
  bad["input_ids"][0, 1] = 120  # one placeholder too many
  bad.pop("mm_token_type_ids")
  with pytest.raises((PlaceholderMismatchError, ValueError), match="placeholder"):
    forward_from_hf_inputs(family, config, params, bad)
  short = dict(inputs, pixel_values=inputs["pixel_values"][:-1])
  with pytest.raises(ValueError, match=r"do not match grid_thw"):
    forward_from_hf_inputs(family, config, params, short)

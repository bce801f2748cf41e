"""M-RoPE position ids equal transformers' `get_rope_index` (and the data pipeline's for images)."""

import numpy as np
import pytest
import torch

from mmjax.data.sample import mrope_positions
from mmjax.models.qwen_vl import QwenVLConfig, positions_for
from qwen_vl_models import IMAGE, build, make_inputs, qwen_vl_config

IMG = lambda h, w: ("image", (1, h, w))
VID = lambda t, h, w: ("video", (t, h, w))
ROWS = [[3, IMG(4, 6), 2, IMG(2, 2)], [1, VID(3, 2, 4), 4, IMG(8, 2)], [7], [IMG(2, 6), VID(2, 4, 2)]]


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("seconds", [None, 0.35])
def test_rope_index_matches_transformers(kind, seconds):
  hf_cfg = qwen_vl_config(kind)
  model = build(kind, hf_cfg).model
  inputs = make_inputs(kind, hf_cfg, ROWS, seed=1)
  if seconds is not None:
    inputs["second_per_grid_ts"] = np.full(2, seconds, np.float32)
  kw = dict(image_grid_thw=inputs["image_grid_thw"], video_grid_thw=inputs["video_grid_thw"],
            attention_mask=inputs["attention_mask"])
  if kind == "qwen2_5_vl":
    kw["second_per_grid_ts"] = inputs.get("second_per_grid_ts")
  ref, ref_deltas = model.get_rope_index(
      torch.tensor(inputs["input_ids"]), torch.tensor(inputs["mm_token_type_ids"]),
      **{k: None if v is None else torch.tensor(v) for k, v in kw.items()})
  ours, deltas = positions_for(QwenVLConfig.from_hf(hf_cfg.to_dict()), inputs["input_ids"],
                               inputs["attention_mask"], inputs["image_grid_thw"],
                               inputs["video_grid_thw"], None, inputs.get("second_per_grid_ts"))
  np.testing.assert_array_equal(ours, ref.numpy())
  np.testing.assert_array_equal(deltas, ref_deltas.numpy())


def test_data_pipeline_positions_agree_for_images():
  hf_cfg = qwen_vl_config("qwen2_vl")
  inputs = make_inputs("qwen2_vl", hf_cfg, [[3, IMG(4, 6), 2, IMG(2, 2), 1, IMG(6, 2)]], seed=2)
  ours, _ = positions_for(QwenVLConfig.from_hf(hf_cfg.to_dict()), inputs["input_ids"],
                          image_grid_thw=inputs["image_grid_thw"])
  theirs = mrope_positions(inputs["input_ids"][0], IMAGE,
                           [tuple(g) for g in inputs["image_grid_thw"]], 2)
  np.testing.assert_array_equal(ours[:, 0].T, theirs)

"""The Pixtral vision tower: every hidden state equals transformers' `PixtralVisionModel` in
float32 for images of different sizes packed in one sequence (sizes that are no multiple of the
patch among them), across activations, head widths and RoPE bases."""

import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, max_diff, record, save
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.encoders.pixtral_vit import pack_images
from pixtral_models import pixtral_vision_config

# name -> (config overrides, image_sizes (h, w) in pixels inside a [24, 32] padded batch)
CASES = {
    "gelu_two_heads": (dict(), [[24, 16], [13, 32]]),
    "silu_four_heads_theta": (dict(hidden_act="silu", num_attention_heads=4, num_hidden_layers=2,
                                   rope_parameters={"rope_type": "axial", "rope_theta": 100.0}),
                              [[8, 32], [24, 4], [4, 4]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pixtral_tower_matches_transformers(name, tmp_path):
  kw, sizes = CASES[name]
  cfg = pixtral_vision_config(**kw)
  torch.manual_seed(0)
  hf_dir = save(transformers.PixtralVisionModel(cfg), str(tmp_path / "hf"))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == "pixtral_vision"

  sizes = np.asarray(sizes)
  pixels = np.random.default_rng(1).normal(size=(len(sizes), 3, 24, 32)).astype(np.float32)
  model = transformers.PixtralVisionModel.from_pretrained(hf_dir, attn_implementation="eager")
  with torch.no_grad():
    ref = model.eval()(pixel_values=torch.tensor(pixels), image_sizes=torch.tensor(sizes),
                       output_hidden_states=True)
  packed = pack_images(pixels, sizes, cfg.patch_size)
  out = family.build(config).apply(
      {"params": params}, *(packed[k][None] for k in ("patches", "positions", "segment_ids")))

  assert out["hidden_states"].shape[0] == len(ref.hidden_states)
  diffs = [max_diff(ours, theirs.numpy())
           for ours, theirs in zip(out["hidden_states"], ref.hidden_states)]
  diffs.append(max_diff(out["last_hidden_state"], ref.last_hidden_state.numpy()))
  record(f"pixtral_vision/{name}", max(diffs))
  assert max(diffs) <= TOLERANCE, diffs


def test_images_that_do_not_fit_are_named():
  pixels = np.zeros((2, 3, 8, 8), np.float32)
  with pytest.raises(ValueError, match=r"image 1: image_sizes \(12, 8\) does not fit"):
    pack_images(pixels, [[8, 8], [12, 8]], 4)
  with pytest.raises(ValueError, match="2 rows for 1 images"):
    pack_images(pixels[:1], [[8, 8], [8, 8]], 4)
  with pytest.raises(ValueError, match=r"\[images, channels, height, width\]"):
    pack_images(pixels[0], [[8, 8]], 4)

"""CLIP and SigLIP vision towers: every hidden state and the pooled output equal transformers'."""

import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, clip_vision_config, max_diff, record, save, siglip_vision_config
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf

CASES = {
    "clip_quick_gelu": (clip_vision_config, dict()),
    "clip_gelu_patch4": (clip_vision_config, dict(hidden_act="gelu", patch_size=4, image_size=16)),
    "siglip_with_head": (siglip_vision_config, dict()),
    "siglip_no_head_patch4": (siglip_vision_config, dict(vision_use_head=False, patch_size=4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vision_tower_matches_transformers(name, tmp_path):
  make_config, kw = CASES[name]
  cfg = make_config(**kw)
  cls = transformers.CLIPVisionModel if "clip" in name else transformers.SiglipVisionModel
  hf_dir = save(cls(cfg), str(tmp_path / "hf"))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))

  pixels = np.random.default_rng(1).normal(size=(2, 3, cfg.image_size, cfg.image_size))
  pixels = pixels.astype(np.float32)
  model = cls.from_pretrained(hf_dir, attn_implementation="eager").eval()
  with torch.no_grad():
    ref = model(pixel_values=torch.tensor(pixels), output_hidden_states=True)
  out = family.build(config).apply({"params": params}, pixels.transpose(0, 2, 3, 1))

  assert out["hidden_states"].shape[0] == len(ref.hidden_states)
  diffs = [max_diff(ours, theirs.numpy())
           for ours, theirs in zip(out["hidden_states"], ref.hidden_states)]
  diffs.append(max_diff(out["last_hidden_state"], ref.last_hidden_state.numpy()))
  if ref.pooler_output is not None:
    diffs.append(max_diff(out["pooled"], ref.pooler_output.numpy()))
  else:
    assert out["pooled"] is None
  record(f"vision/{name}", max(diffs))
  assert max(diffs) <= TOLERANCE, diffs

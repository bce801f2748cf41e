"""IDEFICS conversion: HF -> mmjax -> HF bit for bit (float32 and bfloat16, with and without the
resampler, tied and untied, both layer lists and the decoupled vocabulary), transformers loads
the export, strict errors name the key and leave nothing behind."""

import os

import pytest
import torch
import transformers

from hf_files import assert_same_tensors, load_tensors, rewrite
from hf_models import save
from idefics_models import build, idefics_config
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError


@pytest.mark.parametrize("dtype,kw", [
    (torch.float32, dict(resampler=True, qk_norm=True, perceiver_qk_norm=True)),
    (torch.bfloat16, dict(gate="vector", interval=3, layers=6, tied=True))])
def test_roundtrip_is_bit_exact(tmp_path, dtype, kw):
  hf_dir = save(build(idefics_config(**kw)).to(dtype), str(tmp_path / "hf"))
  store = "bfloat16" if dtype == torch.bfloat16 else "float32"
  report = convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store, progress=False)
  assert report["family"] == "idefics"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  saved = load_tensors(hf_dir)
  assert "model.embed_tokens.additional_embedding.weight" in saved
  assert "model.gated_cross_attn_layers.1.alpha_dense" in saved
  assert_same_tensors(saved, load_tensors(str(tmp_path / "back")))
  _, info = transformers.IdeficsForVisionText2Text.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items() if k != "model.gated_cross_attn_layers.1.alpha_dense"},
     "missing key 'model.gated_cross_attn_layers.1.alpha_dense'"),
    (lambda t: {k: v for k, v in t.items() if k != "lm_head.additional_fc.weight"},
     "missing key 'lm_head.additional_fc.weight'"),
    (lambda t: {**t, "model.gated_cross_attn_layers.2.alpha_dense": torch.zeros(1)},
     "unexpected key 'model.gated_cross_attn_layers.2.alpha_dense'"),
])
def test_strict_errors_name_the_key(tmp_path, change, message):
  hf_dir = save(build(idefics_config()), str(tmp_path / "hf"))
  rewrite(hf_dir, change)
  with pytest.raises(ConversionError, match=message):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # nothing left behind


def test_configs_transformers_cannot_run_are_named():
  """transformers builds `num_hidden_layers // cross_layer_interval` gated layers and reaches
  for one more when the interval does not divide the depth."""
  from mmjax.models.idefics_config import IdeficsConfig

  with pytest.raises(ValueError, match="num_hidden_layers 5 .* cross_layer_interval 2"):
    IdeficsConfig.from_hf(idefics_config(layers=5, interval=2).to_dict())

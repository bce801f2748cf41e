"""Llama 3.2 Vision conversion: HF -> mmjax -> HF bit for bit (float32 and bfloat16, both key
spellings), transformers loads the export, strict errors name the key and leave nothing."""

import os

import pytest
import torch
import transformers

from hf_files import load_tensors, rename_prefixes
from hf_models import save
from mllama_models import build, mllama_config
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError

V4_TO_V5 = (("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_model.", "model.vision_model."),
            ("multi_modal_projector.", "model.multi_modal_projector."))


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "v4"), (torch.bfloat16, "v5")])
def test_roundtrip_is_bit_exact(tmp_path, dtype, layout):
  hf_dir = save(build(mllama_config(cross_layers=(0, 2, 4), text_layers=5)).to(dtype),
                str(tmp_path / "hf"))
  if layout == "v5":  # transformers v5's module names, as the hub's newer saves spell them
    tensors = rename_prefixes(load_tensors(hf_dir), V4_TO_V5)
    from safetensors.torch import save_file
    save_file(tensors, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  report = convert_hf(hf_dir, str(tmp_path / "mm"), progress=False,
                      dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
  assert report["family"] == "mllama" and report["layout"] == layout
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  a, b = load_tensors(hf_dir), load_tensors(str(tmp_path / "back"))
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
  model, info = transformers.MllamaForConditionalGeneration.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_missing_cross_attention_gate_is_named(tmp_path):
  hf_dir = save(build(mllama_config()), str(tmp_path / "hf"))
  key = "language_model.model.layers.3.cross_attn_mlp_gate"
  tensors = {k: v for k, v in load_tensors(hf_dir).items() if k != key}
  from safetensors.torch import save_file
  save_file(tensors, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ConversionError, match="missing key") as e:
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert key in str(e.value)
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # nothing left behind

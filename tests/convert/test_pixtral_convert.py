"""Pixtral and Mistral3 conversion: the key spellings transformers v4 (what v5's save_pretrained
writes) and v5 use round trip bit for bit in float32 and bfloat16, transformers loads the export
cleanly, and missing or unknown tensors are named."""

import pytest
import torch

from hf_files import V4_TO_V5, assert_same_tensors, load_tensors, rename_prefixes, rewrite
from hf_models import text_config
from mmjax.checkpoint import read_metadata
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError
from pixtral_models import mistral3_config, model_class, pixtral_config, tiny

CONFIGS = {
    "pixtral": lambda tied: pixtral_config(text=text_config("mistral", tie_word_embeddings=tied),
                                           vision_feature_layer=[-2, -1],
                                           multimodal_projector_bias=True),
    "mistral3": lambda tied: mistral3_config(
        text=text_config("mistral", tie_word_embeddings=tied)),
}


def loads_cleanly(path: str, hf_cfg):
  model, info = model_class(hf_cfg).from_pretrained(path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype,tied", [(torch.float32, False), (torch.bfloat16, True)])
def test_saved_layout_round_trips_bit_for_bit(tmp_path, name, dtype, tied):
  hf_cfg = CONFIGS[name](tied)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  rewrite(hf_dir, lambda t: {k: v.to(dtype) for k, v in t.items()})
  store = "bfloat16" if dtype == torch.bfloat16 else "float32"
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store, progress=False)
  family, _, meta = read_metadata(str(tmp_path / "mm"))
  assert family.name == name and meta["layout"] == "v4"  # what save_pretrained writes
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"), hf_cfg)


def test_v5_spelling_round_trips(tmp_path):
  hf_cfg = CONFIGS["mistral3"](False)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=2)
  rewrite(hf_dir, lambda t: rename_prefixes(t, V4_TO_V5))
  assert "model.multi_modal_projector.patch_merger.merging_layer.weight" in load_tensors(hf_dir)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v5"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"), hf_cfg)


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items()
                if k != "multi_modal_projector.patch_merger.merging_layer.weight"},
     "merging_layer"),
    (lambda t: {**t, "vision_tower.transformer.layers.0.attention.q_proj.bias": torch.zeros(32)},
     "q_proj.bias"),
    (lambda t: {**t, "vision_tower.ln_pre.weight": torch.zeros(31)}, "ln_pre"),
])
def test_missing_unknown_and_misshapen_tensors_are_named(tmp_path, change, message):
  hf_dir = tiny(str(tmp_path / "hf"), CONFIGS["mistral3"](False), seed=1)
  rewrite(hf_dir, change)
  with pytest.raises(ConversionError, match=message):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert not (tmp_path / "mm").exists()

"""LLaVA-NeXT conversion: the key spellings transformers v4 and v5 write round trip bit for bit
(`image_newline` included), transformers loads the export cleanly, and missing tensors are
named."""

import pytest
import torch
import transformers

from hf_files import V4_TO_V5, assert_same_tensors, load_tensors, rename_prefixes, rewrite
from hf_models import siglip_vision_config, text_config
from llava_next_models import llava_next_config, tiny
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError

NEXT_V4_TO_V5 = (*V4_TO_V5, ("image_newline", "model.image_newline"))


def loads_cleanly(path: str):
  model, info = transformers.LlavaNextForConditionalGeneration.from_pretrained(
      path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  return model


@pytest.mark.parametrize("dtype,vision,tied", [
    (torch.float32, None, False), (torch.bfloat16, siglip_vision_config(), True)])
def test_saved_layout_round_trips_bit_for_bit(tmp_path, dtype, vision, tied):
  hf_cfg = llava_next_config(vision, text_config("qwen2", tie_word_embeddings=tied),
                             vision_feature_layer=[-2, -1])
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  rewrite(hf_dir, lambda t: {k: v.to(dtype) for k, v in t.items()})
  store = "bfloat16" if dtype == torch.bfloat16 else "float32"
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store, progress=False)
  assert "image_newline" in load_tensors(hf_dir)  # what save_pretrained writes
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))


def test_v5_spelling_reads_and_exports_either_spelling(tmp_path):
  hf_dir = tiny(str(tmp_path / "hf"), llava_next_config(), seed=2)
  v4 = load_tensors(hf_dir)
  rewrite(hf_dir, lambda t: rename_prefixes(t, NEXT_V4_TO_V5))
  assert "model.image_newline" in load_tensors(hf_dir)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v5"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))
  assert cli.main(["export", "--checkpoint", str(tmp_path / "mm"), "--out", str(tmp_path / "v4"),
                   "--layout", "v4_flat_vision", "--quiet"]) == 0
  assert_same_tensors(v4, load_tensors(str(tmp_path / "v4")))


def test_missing_image_newline_is_named(tmp_path):
  hf_dir = tiny(str(tmp_path / "hf"), llava_next_config(), seed=1)
  rewrite(hf_dir, lambda t: {k: v for k, v in t.items() if k != "image_newline"})
  with pytest.raises(ConversionError, match="image_newline"):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)

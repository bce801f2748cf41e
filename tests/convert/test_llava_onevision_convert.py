"""LLaVA-OneVision conversion: bfloat16 and the v5 key spelling round trip bit for bit
(`image_newline` included; the float32 saved layout is in tests/parity/test_llava_onevision.py),
and export writes either spelling."""

import torch

from hf_files import V4_TO_V5, assert_same_tensors, load_tensors, rename_prefixes, rewrite
from hf_models import text_config
from llava_onevision_models import onevision_config, tiny
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf

ONEVISION_V4_TO_V5 = (*V4_TO_V5, ("image_newline", "model.image_newline"))


def test_bfloat16_v5_spelling_round_trips_and_exports_either_spelling(tmp_path):
  hf_dir = tiny(str(tmp_path / "hf"), onevision_config(text=text_config("qwen2")), seed=2)
  saved = {k: v.to(torch.bfloat16) for k, v in load_tensors(hf_dir).items()}
  rewrite(hf_dir, lambda t: rename_prefixes({k: v.to(torch.bfloat16) for k, v in t.items()},
                                            ONEVISION_V4_TO_V5))
  assert "model.image_newline" in load_tensors(hf_dir)
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype="bfloat16", progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v5"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  assert cli.main(["export", "--checkpoint", str(tmp_path / "mm"), "--out", str(tmp_path / "v4"),
                   "--layout", "v4_flat_vision", "--quiet"]) == 0
  assert_same_tensors(saved, load_tensors(str(tmp_path / "v4")))

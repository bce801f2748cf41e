"""HF -> mmjax -> HF gives every tensor back bit for bit, and transformers loads the result."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from hf_files import V4_TO_V5, load_tensors, rename_prefixes, rewrite, tiny_llava
from hf_models import TOLERANCE, clip_vision_config, max_diff, save
from mmjax import cli
from mmjax.checkpoint import load_checkpoint, read_metadata
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.models.registry import forward_from_hf_inputs


def assert_same_tensors(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    assert a[key].shape == b[key].shape, key
    assert torch.equal(a[key], b[key]), key  # bit for bit


def loads_cleanly(path: str):
  model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
      path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  return model.eval()


@pytest.mark.parametrize("source_dtype,store_dtype", [
    (torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.bfloat16, "float32")])
def test_roundtrip_is_bit_exact(tmp_path, source_dtype, store_dtype):
  hf_dir = tiny_llava(str(tmp_path / "hf"), dtype=source_dtype)
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store_dtype, progress=False)
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))
  with open(tmp_path / "back" / "config.json") as f:
    assert json.load(f)["dtype"] == str(source_dtype).removeprefix("torch.")


def test_exported_model_gives_the_same_logits(tmp_path):
  hf_dir = tiny_llava(str(tmp_path / "hf"), tied=True)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 0
  assert cli.main(["export", "--checkpoint", str(tmp_path / "mm"), "--out",
                   str(tmp_path / "back"), "--layout", "v5", "--quiet"]) == 0
  assert all(k.startswith(("model.", "lm_head.")) for k in load_tensors(str(tmp_path / "back")))
  model = loads_cleanly(str(tmp_path / "back"))
  ids = torch.tensor([[1] + [127] * 16 + [5, 6, 7]])
  pixels = torch.randn(1, 3, 32, 32)
  with torch.no_grad():
    ref = model(input_ids=ids, pixel_values=pixels).logits.numpy()
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  ours = forward_from_hf_inputs(family, config, params,
                                {"input_ids": ids.numpy(), "pixel_values": pixels.numpy()})
  assert max_diff(ours, ref) <= TOLERANCE


def test_v5_layout_is_read_and_written_back(tmp_path):
  hf_dir = tiny_llava(str(tmp_path / "hf"))
  rewrite(hf_dir, lambda t: rename_prefixes(t, V4_TO_V5))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v5"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))


def test_v4_nested_vision_layout(tmp_path):
  hf_dir = tiny_llava(str(tmp_path / "hf"))
  nested = (("vision_tower.", "vision_tower.vision_model."),)
  rewrite(hf_dir, lambda t: rename_prefixes(t, nested))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v4"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))


def test_sharded_checkpoints_in_and_out(tmp_path):
  hf_dir = tiny_llava(str(tmp_path / "hf"), max_shard_size="40KB")
  assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), max_shard_bytes=40_000, progress=False)
  assert os.path.exists(tmp_path / "back" / "model.safetensors.index.json")
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))


def test_legacy_pytorch_bin_is_read_weights_only(tmp_path):
  hf_dir = tiny_llava(str(tmp_path / "hf"), dtype=torch.bfloat16)
  tensors = load_tensors(hf_dir)
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  torch.save(tensors, legacy / "pytorch_model.bin")
  (legacy / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
  convert_hf(str(legacy), str(tmp_path / "mm"), progress=False)
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(tensors, load_tensors(str(tmp_path / "back")))


def test_vision_model_with_vision_model_prefix(tmp_path):
  hf_dir = save(transformers.CLIPVisionModel(clip_vision_config()), str(tmp_path / "hf"))
  rewrite(hf_dir, lambda t: {f"vision_model.{k}": v for k, v in t.items()})
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))


def test_tokenizer_and_processor_files_travel_along(tmp_path):
  hf_dir = tiny_llava(str(tmp_path / "hf"))
  (tmp_path / "hf" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert (tmp_path / "back" / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'

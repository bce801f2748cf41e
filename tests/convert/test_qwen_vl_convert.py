"""Qwen-VL conversion: every saved layout, bit-exact round trips, strict errors, hub configs."""

import os

import pytest
import torch

from hf_files import load_tensors, rename_prefixes, rewrite
from hf_models import TOLERANCE, max_diff, save
from mmjax import cli
from mmjax.checkpoint import load_checkpoint, read_metadata
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError
from mmjax.models.qwen_vl import QwenVLConfig
from mmjax.models.registry import forward_from_hf_inputs
from qwen_vl_models import CLASSES, build, make_inputs, qwen_vl_config, reference_logits

V4_TO_V5 = (("model.", "model.language_model."), ("visual.", "model.visual."))


def assert_same_tensors(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def loads_cleanly(kind: str, path: str):
  model, info = CLASSES[kind][1].from_pretrained(path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  return model.eval()


def tiny(kind, path, dtype=torch.float32, tied=False, seed=0) -> str:
  return save(build(kind, qwen_vl_config(kind, tied=tied)).to(dtype), path, seed=seed)


@pytest.mark.parametrize("kind,dtype,tied,layout", [
    ("qwen2_vl", torch.float32, False, "v4"),  # transformers 5.23 saves Qwen2-VL in the v4 layout
    ("qwen2_5_vl", torch.bfloat16, True, "v4"),
    ("qwen3_vl", torch.float32, False, "v5"),  # ... and Qwen3-VL in the v5 one
])
def test_roundtrip_is_bit_exact(tmp_path, kind, dtype, tied, layout):
  hf_dir = tiny(kind, str(tmp_path / "hf"), dtype, tied)
  store = "bfloat16" if dtype == torch.bfloat16 else "float32"
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store, progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == layout
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(kind, str(tmp_path / "back"))


def test_qwen2_vl_v5_layout_and_layout_switch(tmp_path):
  """`model.language_model.*` + `model.visual.*` reads; export writes either spelling back."""
  kind = "qwen2_vl"
  hf_cfg = qwen_vl_config(kind)
  model = build(kind, hf_cfg)
  hf_dir = save(model, str(tmp_path / "hf"), seed=2)
  rewrite(hf_dir, lambda t: rename_prefixes(t, V4_TO_V5))
  assert any(k.startswith("model.visual.") for k in load_tensors(hf_dir))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v5"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  assert cli.main(["export", "--checkpoint", str(tmp_path / "mm"), "--out",
                   str(tmp_path / "v4"), "--layout", "v4", "--quiet"]) == 0
  assert all(k.startswith(("model.layers.", "model.embed_tokens", "model.norm", "visual.",
                           "lm_head.")) for k in load_tensors(str(tmp_path / "v4")))
  reloaded = loads_cleanly(kind, str(tmp_path / "v4"))
  inputs = make_inputs(kind, hf_cfg, [[2, ("image", (1, 4, 6))]])
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  diff = max_diff(forward_from_hf_inputs(family, config, params, inputs),
                  reference_logits(reloaded, inputs), inputs["attention_mask"])
  assert diff <= TOLERANCE, diff


@pytest.fixture
def qwen3_dir(tmp_path):
  return tiny("qwen3_vl", str(tmp_path / "hf"))


def _fails(hf_dir, tmp_path, match, capsys) -> str:
  with pytest.raises(ConversionError, match=match):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert sorted(os.listdir(tmp_path)) == ["hf"]
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 1
  assert sorted(os.listdir(tmp_path)) == ["hf"]
  return capsys.readouterr().err


def test_missing_deepstack_merger_is_named(qwen3_dir, tmp_path, capsys):
  key = "model.visual.deepstack_merger_list.1.linear_fc2.weight"
  rewrite(qwen3_dir, lambda t: {k: v for k, v in t.items() if k != key})
  assert key in _fails(qwen3_dir, tmp_path, "missing key", capsys)


def test_unexpected_key_is_named(qwen3_dir, tmp_path, capsys):
  key = "model.visual.blocks.0.attn.extra.weight"
  rewrite(qwen3_dir, lambda t: {**t, key: torch.ones(3)})
  assert key in _fails(qwen3_dir, tmp_path, "unexpected key", capsys)


def test_wrong_qkv_shape_is_named(qwen3_dir, tmp_path, capsys):
  key = "model.visual.blocks.2.attn.qkv.weight"
  rewrite(qwen3_dir, lambda t: {**t, key: t[key][:-3].contiguous()})
  err = _fails(qwen3_dir, tmp_path, "wrong shape", capsys)
  assert key in err and "(93, 32)" in err


def test_hub_style_flat_config_reads_like_the_nested_one():
  """Qwen2-VL hub configs keep text settings at the root, with rope_scaling type 'mrope'."""
  nested = qwen_vl_config("qwen2_vl", mrope=[4, 2, 2]).to_dict()
  text = nested["text_config"]
  flat = {k: v for k, v in nested.items() if k != "text_config"}
  flat.update({k: v for k, v in text.items() if k not in ("rope_parameters", "model_type")})
  flat.update(rope_theta=10000.0, rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]})
  a, b = QwenVLConfig.from_hf(nested), QwenVLConfig.from_hf(flat)
  assert a == b
  assert a.decoder.rope.mrope_section == (4, 2, 2) and not a.decoder.rope.mrope_interleaved
  assert a.decoder.qkv_bias and not a.decoder.o_bias and a.decoder.head_dim == 16
  q3 = QwenVLConfig.from_hf(qwen_vl_config("qwen3_vl").to_dict())
  assert q3.decoder.rope.mrope_interleaved and q3.decoder.qk_norm
  assert q3.vision.deepstack_visual_indexes == (0, 2)
  assert a.vision.window is None and q3.vision.pos_embed_side == 4
  with pytest.raises(ValueError, match="use_sliding_window"):
    QwenVLConfig.from_hf({**flat, "use_sliding_window": True})

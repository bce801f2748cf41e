"""InternVL conversion: native layouts round trip bit for bit, the original release converts and
exports to the native layout, and every mismatch is a strict, named error."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from hf_files import load_tensors, rename_prefixes, rewrite
from hf_models import TOLERANCE, max_diff, text_config
from internvl_models import (internvl_config, make_inputs, original_tensors, reference_logits,
                             tiny, vision_config, write_original)
from mmjax import cli
from mmjax.checkpoint import load_checkpoint, read_metadata
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError
from mmjax.models.registry import forward_from_hf_inputs

V4_TO_V5 = (("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."))


def assert_same_tensors(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def loads_cleanly(path: str):
  model, info = transformers.InternVLForConditionalGeneration.from_pretrained(
      path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  return model.eval()


@pytest.mark.parametrize("dtype,tied,vision", [
    (torch.float32, False, dict(use_mean_pooling=False)),  # with the final vision LayerNorm
    (torch.bfloat16, True, dict(norm_type="rms_norm", use_qk_norm=True, attention_bias=False)),
])
def test_native_roundtrip_is_bit_exact(tmp_path, dtype, tied, vision):
  hf_cfg = internvl_config(vision_config(**vision), text_config("qwen2", tie_word_embeddings=tied))
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, dtype=dtype)
  store = "bfloat16" if dtype == torch.bfloat16 else "float32"
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store, progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v4"  # what save_pretrained writes
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))


def test_v5_layout_reads_and_exports_either_spelling(tmp_path):
  hf_cfg = internvl_config(vision_config(), text_config("llama"))
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=2)
  rewrite(hf_dir, lambda t: rename_prefixes(t, V4_TO_V5))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v5"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  assert cli.main(["export", "--checkpoint", str(tmp_path / "mm"), "--out", str(tmp_path / "v4"),
                   "--layout", "v4", "--quiet"]) == 0
  assert all(k.startswith(("language_model.", "vision_tower.", "multi_modal_projector."))
             for k in load_tensors(str(tmp_path / "v4")))
  loads_cleanly(str(tmp_path / "v4"))


@pytest.mark.parametrize("decoder", ["internlm2", "llama"])
def test_original_release_exports_the_native_layout(tmp_path, decoder):
  """original -> mmjax -> native equals the native model the fixture was made from, bit for bit;
  transformers loads it with its own config.json and computes the same logits."""
  text = text_config("llama", attention_bias=decoder == "internlm2")
  hf_cfg = internvl_config(vision_config(norm_type="rms_norm", use_qk_norm=True), text)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=3)
  original = write_original(hf_dir, str(tmp_path / "original"), decoder)
  assert any(".wqkv." in k for k in load_tensors(original)) == (decoder == "internlm2")
  convert_hf(original, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["source_layout"] == "original"
  assert cli.main(["export", "--checkpoint", str(tmp_path / "mm"), "--out",
                   str(tmp_path / "back"), "--quiet"]) == 0
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  with open(tmp_path / "back" / "config.json") as f:
    assert json.load(f)["model_type"] == "internvl"
  assert os.path.exists(tmp_path / "back" / "tokenizer_config.json")
  loads_cleanly(str(tmp_path / "back"))
  inputs = make_inputs(hf_cfg, [(2,)], seed=1)
  diff = max_diff(reference_logits(str(tmp_path / "back"), inputs),
                  reference_logits(hf_dir, inputs), inputs["attention_mask"])
  assert diff <= TOLERANCE, diff


@pytest.fixture
def native_dir(tmp_path):
  return tiny(str(tmp_path / "hf"), internvl_config(vision_config(), text_config("qwen2")))


def _fails(hf_dir, tmp_path, match, capsys, error=ConversionError) -> str:
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(error, match=match):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert sorted(os.listdir(tmp_path)) == before
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 1
  assert sorted(os.listdir(tmp_path)) == before
  return capsys.readouterr().err


def test_missing_layer_scale_is_named(native_dir, tmp_path, capsys):
  key = "vision_tower.encoder.layer.2.lambda_2"
  rewrite(native_dir, lambda t: {k: v for k, v in t.items() if k != key})
  assert key in _fails(native_dir, tmp_path, "missing key", capsys)


def test_unexpected_qk_norm_is_named(native_dir, tmp_path, capsys):
  """A q/k-norm weight in a checkpoint whose config switches q/k norm off is not dropped."""
  key = "vision_tower.encoder.layer.0.attention.q_norm.weight"
  rewrite(native_dir, lambda t: {**t, key: torch.ones(32)})
  assert key in _fails(native_dir, tmp_path, "unexpected key", capsys)


def test_wrong_projector_shape_is_named(native_dir, tmp_path, capsys):
  key = "multi_modal_projector.linear_1.weight"
  rewrite(native_dir, lambda t: {**t, key: t[key][:, :-4].contiguous()})
  err = _fails(native_dir, tmp_path, "wrong shape", capsys)
  assert key in err and "(64, 124)" in err


def test_wrong_wqkv_shape_is_named(tmp_path, capsys):
  hf_cfg = internvl_config(vision_config(), text_config("llama"))
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg)
  original = write_original(hf_dir, str(tmp_path / "original"), "internlm2")
  key = "language_model.model.layers.1.attention.wqkv.weight"
  rewrite(original, lambda t: {**t, key: t[key][:-16].contiguous()})
  err = _fails(original, tmp_path, "wrong shape", capsys)
  assert key in err and "(112, 64)" in err  # 2 KV heads x (2 queries + k + v) x 16


def test_original_without_image_token_is_named(tmp_path, capsys):
  hf_cfg = internvl_config(vision_config(), text_config("qwen2"))
  original = write_original(tiny(str(tmp_path / "hf"), hf_cfg), str(tmp_path / "o"), "qwen2")
  os.remove(os.path.join(original, "tokenizer_config.json"))
  assert "<IMG_CONTEXT>" in _fails(original, tmp_path, "image_token_id", capsys, ValueError)


def test_original_v1_pixel_shuffle_is_refused(tmp_path, capsys):
  hf_cfg = internvl_config(vision_config(), text_config("qwen2"))
  original = write_original(tiny(str(tmp_path / "hf"), hf_cfg), str(tmp_path / "o"), "qwen2")
  path = os.path.join(original, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  with open(path, "w") as f:
    json.dump({**cfg, "ps_version": "v1"}, f)
  assert "ps_version" in _fails(original, tmp_path, "ps_version", capsys, ValueError)


def test_wqkv_fixture_groups_per_kv_head():
  """The fixture's wqkv really interleaves: rows [k0: q0 q1 k v | k1: q2 q3 k v], 16 rows each."""
  hf_cfg = internvl_config(vision_config(), text_config("llama"))
  model = transformers.InternVLForConditionalGeneration(hf_cfg)
  native = {("language_model." + k[len("model.language_model."):] if
             k.startswith("model.language_model.") else k): v
            for k, v in model.state_dict().items() if "layers.0.self_attn" in k}
  native = {k.replace("language_model.", "language_model.model.", 1): v for k, v in native.items()}
  out = original_tensors(native, hf_cfg, "internlm2")
  wqkv = out["language_model.model.layers.0.attention.wqkv.weight"].numpy()
  q, k = (native[f"language_model.model.layers.0.self_attn.{n}_proj.weight"].numpy() for n in "qk")
  np.testing.assert_array_equal(wqkv[32:48], k[:16])  # kv head 0: after its two query heads
  np.testing.assert_array_equal(wqkv[64:96], q[32:64])  # kv head 1's query heads 2 and 3

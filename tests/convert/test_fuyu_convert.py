"""Fuyu conversion: the key spellings transformers v4 (what v5's save_pretrained writes) and v5
use round trip bit for bit in float32 and bfloat16, transformers loads the export cleanly, and
missing, unknown or misshapen tensors are named."""

import pytest
import torch
import transformers

from fuyu_models import fuyu_config, tiny
from hf_files import assert_same_tensors, load_tensors, rename_prefixes, rewrite
from hf_models import text_config
from mmjax.checkpoint import read_metadata
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError

V4_TO_V5 = (("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_embed_tokens.", "model.vision_embed_tokens."))


def loads_cleanly(path: str):
  model, info = transformers.FuyuForCausalLM.from_pretrained(path, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


@pytest.mark.parametrize("dtype,tied", [(torch.float32, False), (torch.bfloat16, True)])
def test_saved_layout_round_trips_bit_for_bit(tmp_path, dtype, tied):
  hf_dir = tiny(str(tmp_path / "hf"), fuyu_config(text_config("persimmon",
                                                              tie_word_embeddings=tied)))
  rewrite(hf_dir, lambda t: {k: v.to(dtype) for k, v in t.items()})
  store = "bfloat16" if dtype == torch.bfloat16 else "float32"
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store, progress=False)
  family, _, meta = read_metadata(str(tmp_path / "mm"))
  assert family.name == "fuyu" and meta["layout"] == "v4"  # what save_pretrained writes
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))


def test_v5_spelling_round_trips(tmp_path):
  hf_dir = tiny(str(tmp_path / "hf"), fuyu_config(), seed=2)
  rewrite(hf_dir, lambda t: rename_prefixes(t, V4_TO_V5))
  assert "model.vision_embed_tokens.weight" in load_tensors(hf_dir)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert read_metadata(str(tmp_path / "mm"))[2]["layout"] == "v5"
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  loads_cleanly(str(tmp_path / "back"))


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items() if k != "vision_embed_tokens.bias"},
     "vision_embed_tokens.bias"),
    (lambda t: {**t, "vision_embed_tokens.extra": torch.zeros(3)}, "vision_embed_tokens.extra"),
    (lambda t: {**t, "vision_embed_tokens.weight": torch.zeros(64, 11)}, "vision_embed_tokens"),
    (lambda t: {**t, "language_model.model.layers.0.self_attn.query_key_value.bias":
                torch.zeros(190)}, "query_key_value.bias"),
])
def test_missing_unknown_and_misshapen_tensors_are_named(tmp_path, change, message):
  hf_dir = tiny(str(tmp_path / "hf"), fuyu_config(), seed=1)
  rewrite(hf_dir, change)
  with pytest.raises(ConversionError, match=message):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert not (tmp_path / "mm").exists()

"""Persimmon conversion: the fused per-head query_key_value splits into q/k/v and joins back bit
for bit (float32 and bfloat16), transformers loads the export cleanly, and missing or misshapen
tensors are named."""

import pytest
import torch
import transformers

from hf_files import assert_same_tensors, load_tensors, rewrite
from hf_models import save, text_config
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError


def tiny_persimmon(path: str, tied: bool = False, seed: int = 0) -> str:
  cfg = text_config("persimmon", tie_word_embeddings=tied)
  return save(transformers.AutoModelForCausalLM.from_config(cfg), path, seed)


@pytest.mark.parametrize("dtype,tied", [(torch.float32, False), (torch.bfloat16, True)])
def test_persimmon_round_trips_bit_for_bit(tmp_path, dtype, tied):
  hf_dir = tiny_persimmon(str(tmp_path / "hf"), tied)
  rewrite(hf_dir, lambda t: {k: v.to(dtype) for k, v in t.items()})
  store = "bfloat16" if dtype == torch.bfloat16 else "float32"
  convert_hf(hf_dir, str(tmp_path / "mm"), dtype=store, progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))
  assert family.name == "causal_lm" and (config.norm, config.mlp) == ("layer", "dense")
  assert params["decoder"]["layers"]["attn"]["q"]["kernel"].shape == (2, 4, 16, 64)  # [L,N,H,D]
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


@pytest.mark.parametrize("change,message", [
    (lambda t: {k: v for k, v in t.items()
                if k != "model.layers.1.self_attn.q_layernorm.bias"}, "q_layernorm.bias"),
    (lambda t: {**t, "model.layers.0.self_attn.query_key_value.weight": torch.zeros(96, 64)},
     "query_key_value"),
    (lambda t: {**t, "model.final_layernorm.bias": torch.zeros(63)}, "final_layernorm"),
])
def test_missing_and_misshapen_tensors_are_named(tmp_path, change, message):
  hf_dir = tiny_persimmon(str(tmp_path / "hf"), seed=1)
  rewrite(hf_dir, change)
  with pytest.raises(ConversionError, match=message):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert not (tmp_path / "mm").exists()

"""Saving tiny LLaVA checkpoints in the layouts and formats users meet."""

import json
import os

import torch
import transformers
from safetensors.torch import load_file, save_file

from hf_models import clip_vision_config, llava_config, save, text_config


def tiny_llava(path: str, dtype=torch.float32, tied=False, seed=0, **save_kw) -> str:
  cfg = llava_config(clip_vision_config(num_hidden_layers=2),
                     text_config("llama", tie_word_embeddings=tied), tie_word_embeddings=tied)
  model = transformers.LlavaForConditionalGeneration(cfg)
  save(model.to(dtype), path, seed=seed, **save_kw)
  return path


def load_tensors(path: str) -> dict[str, torch.Tensor]:
  """All tensors of a (possibly sharded) safetensors directory."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = ["model.safetensors"]
  out = {}
  for name in files:
    out.update(load_file(os.path.join(path, name)))
  return out


def rewrite(path: str, fn) -> None:
  """Replaces the single model.safetensors by `fn(tensors)`."""
  file = os.path.join(path, "model.safetensors")
  save_file(fn(load_file(file)), file, metadata={"format": "pt"})


def assert_conversion_refuses(hf_root, tmp_path, change, message: str) -> None:
  """A copy of the HF directory `hf_root` with its tensors rewritten by `change` fails to
  convert with a `ConversionError` matching `message`, and leaves no output directory."""
  import pytest  # pylint: disable=g-import-not-at-top

  from mmjax.convert.importer import convert_hf  # pylint: disable=g-import-not-at-top
  from mmjax.convert.plan import ConversionError  # pylint: disable=g-import-not-at-top

  hf_dir = tmp_path / "hf"
  os.makedirs(hf_dir)
  for name in ("config.json", "model.safetensors"):
    (hf_dir / name).write_bytes((hf_root / name).read_bytes())
  rewrite(str(hf_dir), change)
  with pytest.raises(ConversionError, match=message):
    convert_hf(str(hf_dir), str(tmp_path / "mm"), progress=False)
  assert not (tmp_path / "mm").exists()


V4_TO_V5 = (("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."))


def assert_same_tensors(a: dict, b: dict) -> None:
  """The same keys, dtypes and values, bit for bit."""
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def rename_prefixes(tensors: dict, pairs) -> dict:
  out = {}
  for key, value in tensors.items():
    for old, new in pairs:
      if key.startswith(old):
        key = new + key[len(old):]
        break
    out[key] = value
  return out


def converted_tiny_llava(root) -> tuple[str, str]:
  """(HF directory, mmjax checkpoint) of `tiny_llava` under `root` (`root/hf`, `root/ck`)."""
  from mmjax.convert.importer import convert_hf

  hf = tiny_llava(os.path.join(root, "hf"))
  convert_hf(hf, os.path.join(root, "ck"), progress=False)
  return hf, os.path.join(root, "ck")

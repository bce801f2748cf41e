"""Strictness: bad checkpoints fail with the key or file named, and leave nothing behind."""

import os

import pytest
import torch

from hf_files import rewrite, tiny_llava
from mmjax import cli
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError
from mmjax.convert.safetensors_io import CorruptFileError


@pytest.fixture
def hf_dir(tmp_path):
  return tiny_llava(str(tmp_path / "hf"))


def assert_nothing_left(tmp_path):
  assert sorted(os.listdir(tmp_path)) == ["hf"], os.listdir(tmp_path)


def fails(hf_dir, tmp_path, error, match, capsys):
  with pytest.raises(error, match=match):
    convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert_nothing_left(tmp_path)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 1
  assert_nothing_left(tmp_path)
  return capsys.readouterr().err


def test_missing_key(hf_dir, tmp_path, capsys):
  key = "language_model.model.layers.1.mlp.up_proj.weight"
  rewrite(hf_dir, lambda t: {k: v for k, v in t.items() if k != key})
  err = fails(hf_dir, tmp_path, ConversionError, "missing key", capsys)
  assert key in err


def test_unexpected_key(hf_dir, tmp_path, capsys):
  rewrite(hf_dir, lambda t: {**t, "language_model.model.layers.0.extra.weight": torch.ones(3)})
  err = fails(hf_dir, tmp_path, ConversionError, "unexpected key", capsys)
  assert "language_model.model.layers.0.extra.weight" in err


def test_wrong_shape(hf_dir, tmp_path, capsys):
  key = "multi_modal_projector.linear_1.weight"
  rewrite(hf_dir, lambda t: {**t, key: t[key][:, :-1].contiguous()})
  err = fails(hf_dir, tmp_path, ConversionError, "wrong shape", capsys)
  assert key in err and "(64, 31)" in err


def test_truncated_file(hf_dir, tmp_path, capsys):
  path = os.path.join(hf_dir, "model.safetensors")
  os.truncate(path, os.path.getsize(path) - 100)
  err = fails(hf_dir, tmp_path, CorruptFileError, "truncated", capsys)
  assert "model.safetensors" in err


def test_corrupt_header(hf_dir, tmp_path, capsys):
  path = os.path.join(hf_dir, "model.safetensors")
  with open(path, "r+b") as f:
    f.seek(8)
    f.write(b"\xff\xfe not json")
  fails(hf_dir, tmp_path, CorruptFileError, "corrupt", capsys)


def test_missing_shard(tmp_path, capsys):
  hf_dir = tiny_llava(str(tmp_path / "hf"), max_shard_size="40KB")
  shard = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))[-1]
  os.remove(os.path.join(hf_dir, shard))
  err = fails(hf_dir, tmp_path, FileNotFoundError, shard, capsys)
  assert shard in err


def test_non_empty_output_is_refused(hf_dir, tmp_path):
  out = tmp_path / "mm"
  out.mkdir()
  (out / "keep.txt").write_text("user data")
  with pytest.raises(FileExistsError):
    convert_hf(hf_dir, str(out), progress=False)
  assert (out / "keep.txt").read_text() == "user data"


def test_unsupported_model_type(tmp_path):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text('{"model_type": "bert"}')
  with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
    convert_hf(str(tmp_path / "hf"), str(tmp_path / "mm"), progress=False)

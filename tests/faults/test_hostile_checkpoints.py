"""Hostile checkpoints: a pickle that runs code in a `pytorch_model.bin`, chat templates that try
to leave the sandbox, tampered config files. Each ends in one line and exit 1, runs nothing it
carries, and writes nothing."""

import json
import os
import shutil

import numpy as np
import pytest

from hf_files import converted_tiny_llava
from hostile_files import ESCAPE_TEMPLATES, write_pickle_bomb
from mmjax import cli
from mmjax.data.tokenizer import train_tiny_tokenizer


@pytest.fixture(scope="module")
def hf_and_checkpoint(tmp_path_factory):
  return converted_tiny_llava(str(tmp_path_factory.mktemp("hostile_ckpt")))


def _fails(argv, capsys, command) -> str:
  capsys.readouterr()
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"mmjax {command}: error: ") and err.count("\n") == 1, err
  return err


def test_a_pickle_in_a_bin_file_never_runs(hf_and_checkpoint, tmp_path, capsys, monkeypatch):
  hf = str(shutil.copytree(hf_and_checkpoint[0], tmp_path / "hf"))
  os.remove(os.path.join(hf, "model.safetensors"))
  marker = tmp_path / "PWNED"
  write_pickle_bomb(os.path.join(hf, "pytorch_model.bin"), str(marker))
  monkeypatch.chdir(tmp_path)
  err = _fails(["convert", "--hf", hf, "--out", str(tmp_path / "ck"), "--quiet"], capsys, "convert")
  assert "cannot be read as a weights-only torch file" in err
  assert not marker.exists() and sorted(os.listdir(tmp_path)) == ["hf"]


@pytest.mark.parametrize("template", ESCAPE_TEMPLATES)
def test_a_chat_template_cannot_leave_the_sandbox(hf_and_checkpoint, tmp_path, capsys, monkeypatch,
                                                  template):
  ck = str(shutil.copytree(hf_and_checkpoint[1], tmp_path / "ck"))
  extras = os.path.join(ck, "hf_extras")
  os.makedirs(extras, exist_ok=True)
  train_tiny_tokenizer(["hello there"] * 10, vocab_size=64).save(os.path.join(extras,
                                                                             "tokenizer.json"))
  with open(os.path.join(extras, "tokenizer_config.json"), "w") as f:
    json.dump({"chat_template": template, "eos_token": "</s>"}, f)
  monkeypatch.chdir(tmp_path)
  err = _fails(["generate", "--checkpoint", ck, "--prompt", "hello"], capsys, "generate")
  assert "chat template" in err and ("SecurityError" in err or "Undefined" in err), err
  assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda c: [c], "expected a JSON object, found a list"),
    (lambda c: {**c, "text_config": "llama"}, "does not describe a llava model"),
    (lambda c: {**c, "vision_config": {**c["vision_config"], "hidden_size": -8}},
     "does not describe a llava model"),
])
def test_a_tampered_config_json_is_one_line(hf_and_checkpoint, tmp_path, capsys, edit, message):
  hf = str(shutil.copytree(hf_and_checkpoint[0], tmp_path / "hf"))
  with open(os.path.join(hf, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(hf, "config.json"), "w") as f:
    json.dump(edit(config), f)
  err = _fails(["convert", "--hf", hf, "--out", str(tmp_path / "ck"), "--quiet"], capsys, "convert")
  assert message in err and sorted(os.listdir(tmp_path)) == ["hf"]


def test_a_tampered_mmjax_json_is_one_line(hf_and_checkpoint, tmp_path, capsys):
  ck = str(shutil.copytree(hf_and_checkpoint[1], tmp_path / "ck"))
  path = os.path.join(ck, "mmjax.json")
  with open(path) as f:
    meta = json.load(f)
  meta["config"]["vision"]["num_layers"] = 7
  with open(path, "w") as f:
    json.dump(meta, f)
  np.savez(tmp_path / "in.npz", input_ids=np.array([[1, 2, 3]], np.int32))
  for argv, command in ((["logits", "--checkpoint", ck, "--inputs", str(tmp_path / "in.npz"),
                          "--out", str(tmp_path / "out.npy")], "logits"),
                        (["export", "--checkpoint", ck, "--out", str(tmp_path / "hf"), "--quiet"],
                         "export")):
    err = _fails(argv, capsys, command)
    assert "mmjax.json does not match params/ at ['encoder']" in err
  assert sorted(os.listdir(tmp_path)) == ["ck", "in.npz"]

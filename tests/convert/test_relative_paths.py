"""The first commands a user types take paths relative to where they stand."""

import os

import numpy as np

from hf_files import tiny_llava
from mmjax import cli


def test_convert_logits_export_with_relative_paths(tmp_path, monkeypatch, capsys):
  tiny_llava(str(tmp_path / "hf"))
  monkeypatch.chdir(tmp_path)
  np.savez("inputs.npz", input_ids=np.array([[1, 2, 3]], np.int32))
  assert cli.main(["convert", "--hf", "hf", "--out", "ck", "--quiet"]) == 0, capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["ck", "hf", "inputs.npz"]  # no temporary left
  assert cli.main(["logits", "--checkpoint", "ck", "--inputs", "inputs.npz",
                   "--out", "logits.npy"]) == 0, capsys.readouterr().err
  assert np.load("logits.npy").shape == (1, 3, 128)
  assert cli.main(["export", "--checkpoint", "ck", "--out", "back", "--quiet"]) == 0
  assert os.path.exists(os.path.join("back", "model.safetensors"))
  # A relative output inside a subdirectory as well.
  os.makedirs("sub")
  assert cli.main(["convert", "--hf", "hf", "--out", "sub/ck2", "--quiet"]) == 0
  assert os.listdir("sub") == ["ck2"]

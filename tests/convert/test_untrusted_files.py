"""Files a user did not write: config.json and index files that lie, integer weights, tampered
mmjax.json, and the staging directories a killed conversion leaves behind."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hf_files import converted_tiny_llava, rewrite, tiny_llava
from mmjax import checkpoint, cli, staging
from mmjax.convert.importer import convert_hf


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(hf dir, converted checkpoint) of the tiny LLaVA, shared read-only by the tests here."""
  return converted_tiny_llava(str(tmp_path_factory.mktemp("converted")))


def convert_fails(hf_dir, out, capsys) -> str:
  capsys.readouterr()  # what building the HF files printed
  assert cli.main(["convert", "--hf", hf_dir, "--out", out, "--quiet"]) == 1
  assert not os.path.exists(out)
  assert not [n for n in os.listdir(os.path.dirname(out)) if ".tmp-" in n]
  err = capsys.readouterr().err
  assert err.startswith("mmjax convert: error: ") and err.count("\n") == 1, err
  return err


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "expected a JSON object, found a list"),
    ('{"model_type": "llava"}', "does not describe a llava model (missing key"),
    ("{nope", "not valid JSON"),
])
def test_a_config_json_that_is_no_model_config_is_one_line(converted, tmp_path, capsys, content,
                                                           message):
  hf = shutil.copytree(converted[0], tmp_path / "hf")
  (hf / "config.json").write_text(content)
  assert message in convert_fails(str(hf), str(tmp_path / "mm"), capsys)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/x.safetensors"])
def test_an_index_that_points_outside_the_directory_is_refused(tmp_path, capsys, shard):
  hf_dir = tiny_llava(str(tmp_path / "hf"), max_shard_size="40KB")
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  with open(index) as f:
    data = json.load(f)
  first = sorted(set(data["weight_map"].values()))[0]
  shutil.copy(os.path.join(hf_dir, first), tmp_path / "outside.safetensors")  # would be followed
  data["weight_map"] = {k: shard if v == first else v for k, v in data["weight_map"].items()}
  with open(index, "w") as f:
    json.dump(data, f)
  err = convert_fails(hf_dir, str(tmp_path / "mm"), capsys)
  assert f"names shard {shard!r}" in err and "shards must sit beside the index" in err


def test_integer_tensors_where_floats_belong_are_reported(converted, tmp_path, capsys):
  hf = str(shutil.copytree(converted[0], tmp_path / "hf"))
  key = "multi_modal_projector.linear_1.bias"
  rewrite(hf, lambda t: {**t, key: torch.arange(t[key].numel(), dtype=torch.int64)})
  capsys.readouterr()
  report = convert_hf(hf, str(tmp_path / "mm"), progress=False)
  assert report["cast_from_integer"] == {key: "I64"}
  assert cli.main(["convert", "--hf", hf, "--out", str(tmp_path / "mm2"), "--quiet"]) == 0
  captured = capsys.readouterr()
  assert '"cast_from_integer": {"multi_modal_projector.linear_1.bias": "I64"}' in captured.out
  assert "1 float parameters were filled from integer tensors" in captured.err


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_killed_conversions_staging_directories_are_removed(converted, tmp_path):
  out = str(tmp_path / "mm")
  host = socket.gethostname()
  owners = {"dead": {"host": host, "pid": _dead_pid(), "start": "1"},
            "reused": {"host": host, "pid": os.getpid(), "start": "not this process"},
            "live": staging.owner(),
            "elsewhere": {"host": host + "-other", "pid": 1, "start": None}}
  for name, owner in owners.items():
    os.makedirs(f"{out}.tmp-{name}/params")
    with open(f"{out}.tmp-{name}/{staging.OWNER_FILE}", "w") as f:
      json.dump(owner, f)
  os.makedirs(f"{out}.tmp-old/params")  # no owner record: judged by age
  os.makedirs(f"{out}.tmp-fresh/params")
  two_days_ago = time.time() - 2 * 24 * 3600
  for path in (f"{out}.tmp-old/params", f"{out}.tmp-old", f"{out}.tmp-elsewhere/params",
               f"{out}.tmp-elsewhere/{staging.OWNER_FILE}", f"{out}.tmp-elsewhere"):
    os.utime(path, (two_days_ago, two_days_ago))
  convert_hf(converted[0], out, progress=False)
  left = sorted(n for n in os.listdir(tmp_path) if n.startswith("mm.tmp-"))
  assert left == ["mm.tmp-fresh", "mm.tmp-live"]  # the others' owners are gone or long idle
  assert staging.OWNER_FILE not in os.listdir(out)


def test_loading_a_valid_checkpoint_warns_of_nothing(converted, caplog):
  with caplog.at_level(logging.WARNING):
    checkpoint.load_checkpoint(converted[1])
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def _edit_config(meta):
  meta["config"]["decoder"]["num_layers"] += 1


def _wrong_type(meta):
  meta["config"]["decoder"]["hidden_size"] = "wide"


@pytest.mark.parametrize("tamper,message", [
    (lambda path: open(path, "w").write("{oops"), "not valid JSON"),
    (lambda path: open(path, "w").write("[]"), "expected a JSON object"),
    ((_edit_config, None), "does not match params/ at ['decoder']['layers']"),
    ((_wrong_type, None), "its config does not build a llava model"),
    ((lambda meta: meta.update(family="gpt9"), None), "unknown family 'gpt9'"),
    ((lambda meta: meta["config"].update(depth=3), None), "unknown config keys ['depth']"),
])
def test_a_tampered_mmjax_json_is_one_line(converted, tmp_path, capsys, tamper, message):
  capsys.readouterr()
  ck = str(shutil.copytree(converted[1], tmp_path / "ck"))
  path = os.path.join(ck, checkpoint.METADATA_FILE)
  if isinstance(tamper, tuple):
    with open(path) as f:
      meta = json.load(f)
    tamper[0](meta)
    with open(path, "w") as f:
      json.dump(meta, f)
  else:
    tamper(path)
  np.savez(tmp_path / "in.npz", input_ids=np.array([[1, 2, 3]], np.int32))
  assert cli.main(["logits", "--checkpoint", ck, "--inputs", str(tmp_path / "in.npz"),
                   "--out", str(tmp_path / "l.npy")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("mmjax logits: error: ") and message in err and err.count("\n") == 1, err
  assert not os.path.exists(tmp_path / "l.npy")

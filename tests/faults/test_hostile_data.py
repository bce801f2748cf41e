"""Hostile datasets: a decompression bomb, paths out of the image root, image fields that are no
images, missing and corrupt files, a template that rejects a conversation, a UTF-8 BOM, broken
JSONL lines. Every bad sample is skipped and counted by reason; `mmjax data check`, `data pack`
and training count the same; nothing outside the image root is read or packed."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from hostile_files import ALTERNATING_TEMPLATE, bomb_png
from mmjax import cli
from mmjax.data.tokenizer import train_tiny_tokenizer
from mmjax.train.cli import load_config
from mmjax.train.loop import train

SPECIALS = ("<unk>", "<s>", "</s>", "<image>")
GOOD = 16  # two steps of 8 rows, one sample per row

# (record fields, the reason it is skipped for); `None`: a good sample.
BAD = [
    ({"image": "bomb.png"}, "image_too_large"),
    ({"image": "../secret.png"}, "image_outside_root"),
    ({"image": "/etc/passwd"}, "image_outside_root"),
    ({"image": 123}, "bad_record"),
    ({"image": [None]}, "bad_record"),
    ({"image": [123]}, "bad_record"),
    ({"image": "missing.png"}, "missing_image"),
    ({"image": "corrupt.png"}, "corrupt_image"),
    ({"conversations": [{"from": "human", "value": "Hi."}, {"from": "human", "value": "Hi?"},
                        {"from": "gpt", "value": "Yes."}]}, "template_error"),
    ({"conversations": [{"from": "martian", "value": "Hi."}]}, "bad_record"),
]
EXPECTED = {"bad_record": 4, "missing_image": 1, "corrupt_image": 1, "image_outside_root": 2,
            "image_too_large": 1, "template_error": 1}


def _record(i, image=None):
  record = {"id": f"s{i}", "conversations": [
      {"from": "human", "value": ("<image>\n" if image else "") + "What is in the picture?"},
      {"from": "gpt", "value": "A red square."}]}
  if image:
    record["image"] = image
  return record


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(data.json with a BOM, image root, tokenizer dir with a role-checking chat template)."""
  tmp = tmp_path_factory.mktemp("hostile")
  tok = tmp / "tok"
  tok.mkdir()
  corpus = ["What is in the picture? A red square. user assistant Hi. Yes."] * 20
  tokenizer = train_tiny_tokenizer(corpus, special_tokens=SPECIALS, vocab_size=120)
  tokenizer.save(str(tok / "tokenizer.json"))
  (tok / "tokenizer_config.json").write_text(json.dumps({"chat_template": ALTERNATING_TEMPLATE}))
  root = tmp / "images"
  root.mkdir()
  rng = np.random.default_rng(0)
  for i in range(GOOD):
    Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(root / f"{i}.png")
  (root / "bomb.png").write_bytes(bomb_png())
  (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
  (tmp / "secret.png").write_bytes((root / "0.png").read_bytes() + b"SECRET")
  records = []
  for i in range(GOOD):  # bad samples between good ones; a good one last (its skips count)
    records.append(_record(i, f"{i}.png" if i % 4 else None))
    if i < len(BAD):
      fields = BAD[i][0]  # an image field comes with its <image> placeholder
      records.append({**_record(100 + i, "image" in fields), **fields, "id": f"bad{i}"})
  path = tmp / "data.json"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, indent=1).encode())
  return str(path), str(root), str(tok)


def test_data_check_and_training_count_the_same_skips(dataset, tmp_path, capsys):
  path, root, tok = dataset
  report = tmp_path / "report.json"
  assert cli.main(["data", "check", path, "--image-root", root, "--tokenizer", tok, "--template",
                   "tokenizer", "--report", str(report)]) == 0, capsys.readouterr()
  checked = json.loads(report.read_text())
  assert checked == {"total": GOOD + len(BAD), "usable": GOOD, "skipped": EXPECTED}
  out = capsys.readouterr().out
  assert f"{GOOD} of {GOOD + len(BAD)} samples usable" in out and "image_too_large: 1" in out

  cfg = load_config(None)
  cfg.model.vision.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
  cfg.model.decoder.update(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=4, num_kv_heads=2, head_dim=8)
  cfg.model.image_token_id = 3  # "<image>"
  cfg.data = dict(image_preset="clip224", image_overrides=dict(shortest_edge=32, crop_size=32,
                                                               patch_size=16),
                  template="tokenizer", tokenizer=tok, max_length=64, max_tiles=1, max_images=1,
                  batch_size=8, packing=False, shuffle=False,
                  sources=[dict(path=path, image_root=root)])
  cfg.train.update(steps=GOOD // 8, log_every=1)
  cfg.eval.kind = ""
  summary = train(cfg, str(tmp_path / "run"))
  assert summary["final_step"] == GOOD // 8 and summary["skipped_samples"] == EXPECTED
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f][-1]
  per_reason = {k.split("/")[1]: v for k, v in last.items() if k.startswith("skipped_samples/")}
  assert per_reason == EXPECTED
  assert last["skipped_samples"] == sum(EXPECTED.values()) and np.isfinite(last["loss"])


def test_pack_skips_the_same_and_embeds_nothing_from_outside(dataset, tmp_path, capsys):
  path, root, _ = dataset
  shards = tmp_path / "shards"
  assert cli.main(["data", "pack", path, "--image-root", root, "--output", str(shards),
                   "--num-shards", "2"]) == 0
  out = capsys.readouterr().out
  # Packing reads records and images but does not template: the rejected conversation is packed.
  expected = {k: v for k, v in EXPECTED.items() if k != "template_error"}
  assert f"packed {GOOD + 1} of {GOOD + len(BAD)} samples" in out, out
  for reason, n in expected.items():
    assert f"skipped {n}: {reason}" in out, out
  packed = b"".join(p.read_bytes() for p in shards.iterdir())
  assert b"SECRET" not in packed and b"root:" not in packed
  assert not [p for p in shards.iterdir() if not p.name.endswith(".array_record")]


def test_broken_jsonl_lines_are_counted_not_fatal(dataset, tmp_path, capsys):
  _, root, _ = dataset
  lines = [json.dumps(_record(1, "1.png")), "{not json", '{"id": "cut", "conversa',
           json.dumps(_record(2, "2.png")), "[1, 2]"]
  (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
  report = tmp_path / "r.json"
  assert cli.main(["data", "check", str(tmp_path / "d.jsonl"), "--image-root", root,
                   "--report", str(report)]) == 0
  assert json.loads(report.read_text()) == {"total": 5, "usable": 2, "skipped": {"bad_record": 3}}

"""The trainer on the general data pipeline: a LLaVA-format JSON dataset with images, packed rows,
and exact resume through the pipeline's iterator state."""

import json
import os

import numpy as np
from PIL import Image

from mmjax.data.tokenizer import train_tiny_tokenizer
from mmjax.train.cli import load_config
from mmjax.train.loop import train

SPECIALS = ("<unk>", "<s>", "</s>", "<image>")
CORPUS = ["A chat between a curious human and an artificial intelligence assistant.",
          "USER: What is in the picture? ASSISTANT: A red square on a blue background."] * 20


def write_dataset(tmp_path) -> tuple[str, str, str]:
  tok_dir = tmp_path / "tok"
  tok_dir.mkdir()
  train_tiny_tokenizer(CORPUS, special_tokens=SPECIALS, vocab_size=120).save(
      str(tok_dir / "tokenizer.json"))
  root = tmp_path / "images"
  root.mkdir()
  rng = np.random.default_rng(0)
  records = []
  for i in range(12):
    record = {"id": f"s{i}", "conversations": [
        {"from": "human", "value": ("<image>\n" if i % 4 else "") + "What is in the picture?"},
        {"from": "gpt", "value": "A red square." * (1 + i % 2)}]}
    if i % 4:  # every fourth sample is text-only
      Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(root / f"{i}.png")
      record["image"] = f"{i}.png"
    records.append(record)
  path = tmp_path / "data.json"
  path.write_text(json.dumps(records))
  return str(path), str(root), str(tok_dir)


def config(data_path, image_root, tok_dir):
  cfg = load_config(None)
  cfg.model.vision.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
  cfg.model.decoder.update(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8)
  cfg.model.image_token_id = 3  # "<image>" in the tokenizer above
  cfg.data = dict(image_preset="clip224", image_overrides=dict(shortest_edge=32, crop_size=32,
                                                               patch_size=16),
                  template="vicuna_v1", tokenizer=tok_dir, max_length=256, max_tiles=2,
                  max_images=2, batch_size=8, packing=True,
                  sources=[dict(path=data_path, image_root=image_root)])
  cfg.optim.warmup_steps = 1
  cfg.train.update(steps=6, log_every=1)
  cfg.checkpoint.every_steps = 3
  cfg.eval.kind = ""
  return cfg


def losses_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_llava_trains_on_a_json_dataset_and_resumes_exactly(tmp_path):
  cfg = config(*write_dataset(tmp_path))
  straight = train(cfg, str(tmp_path / "straight"))
  assert straight["final_step"] == 6 and straight["skipped"] == 0
  assert train(cfg, str(tmp_path / "resumed"), stop_after=3)["final_step"] == 3
  assert train(cfg, str(tmp_path / "resumed"))["start_step"] == 3
  a, b = losses_of(tmp_path / "straight"), losses_of(tmp_path / "resumed")
  assert sorted(b) == list(range(1, 7)) and all(np.isfinite(list(a.values())))
  assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]

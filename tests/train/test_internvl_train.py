"""InternVL through `mmjax train`: the tiny config (`configs/tiny/internvl.py`) on a JSON dataset
through the InternVL preprocessing (dynamic tiles + thumbnail, `<img><IMG_CONTEXT>*N</img>`),
drop path active in training only, frozen parts bit-identical, and exact resume."""

import json
import os

import jax
import numpy as np
from PIL import Image

from mmjax.checkpoint import load_checkpoint
from mmjax.data.tokenizer import train_tiny_tokenizer
from mmjax.train.cli import load_config
from mmjax.train.loop import Trainer, train

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "configs")
SPECIALS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<img>", "</img>",
            "<IMG_CONTEXT>")
CORPUS = ["You are a helpful assistant. What is in the picture? A red square on a blue "
          "background. Describe the colours."] * 20


def write_dataset(tmp_path):
  tok_dir = tmp_path / "tok"
  tok_dir.mkdir()
  tokenizer = train_tiny_tokenizer(CORPUS, special_tokens=SPECIALS, vocab_size=160)
  tokenizer.save(str(tok_dir / "tokenizer.json"))
  root = tmp_path / "images"
  root.mkdir()
  rng = np.random.default_rng(0)
  records = []
  for i in range(10):
    # Wide, tall and square images: 2 to 6 tiles plus the thumbnail.
    h, w = [(32, 96), (64, 32), (40, 40), (32, 64), (96, 64)][i % 5]
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    records.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A red square." if i % 2 else "A blue background."}]})
  path = tmp_path / "data.json"
  path.write_text(json.dumps(records))
  return str(path), str(root), str(tok_dir), tokenizer.token_to_id("<IMG_CONTEXT>")


def tiny_config(tmp_path, **vision):
  data_path, image_root, tok_dir, context_id = write_dataset(tmp_path)
  cfg = load_config(os.path.join(CONFIGS, "tiny", "internvl.py"))
  cfg.model.decoder.vocab_size = 320
  cfg.model.image_token_id = context_id
  cfg.model.vision.update(vision)
  cfg.data.tokenizer = tok_dir
  cfg.data.sources = [dict(path=data_path, image_root=image_root)]
  cfg.optim.warmup_steps = 1
  cfg.train.update(steps=6, log_every=1)
  cfg.checkpoint.every_steps = 3
  return cfg


def losses_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_tiny_internvl_trains_with_drop_path_and_resumes_exactly(tmp_path):
  cfg = tiny_config(tmp_path, drop_path_rate=0.2)
  straight = train(cfg, str(tmp_path / "straight"))
  assert straight["final_step"] == 6 and straight["skipped"] == 0
  assert train(cfg, str(tmp_path / "resumed"), stop_after=3)["final_step"] == 3
  assert train(cfg, str(tmp_path / "resumed"))["start_step"] == 3
  a, b = losses_of(tmp_path / "straight"), losses_of(tmp_path / "resumed")
  assert all(np.isfinite(list(a.values())))
  assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]
  assert a[6] < a[1]


def test_drop_path_only_in_training(tmp_path):
  """The same batch gives different losses under different dropout keys only when the encoder
  has a drop path rate; evaluation (no rng) is deterministic."""
  from mmjax.train.model_config import build_model_config
  from mmjax.train.step import forward, uses_drop_path

  cfg = tiny_config(tmp_path, drop_path_rate=0.5)
  family, config = build_model_config(cfg.model)
  module = family.build(config)
  inputs = family.example_inputs(config)
  params = module.init(jax.random.PRNGKey(0), *inputs)["params"]
  batch = dict(input_ids=inputs[0], pixel_values=inputs[1], positions=inputs[2],
               attention_mask=np.ones_like(inputs[0]))
  assert uses_drop_path(module)
  a, b = (forward(module, params, batch, jax.random.PRNGKey(k)) for k in (1, 2))
  assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) > 1e-4
  np.testing.assert_array_equal(forward(module, params, batch), forward(module, params, batch))


def test_mlp_only_stage_keeps_backbone_and_llm_bit_identical(tmp_path):
  cfg = tiny_config(tmp_path)
  cfg.train.update(steps=2, trainable=("connector",))
  workdir = str(tmp_path / "mlp")
  train(cfg, workdir)
  _, _, trained = load_checkpoint(os.path.join(workdir, "model"))
  fresh = jax.device_get(Trainer.build(cfg).init().all_params())  # where training started
  for part in ("encoder", "decoder"):
    jax.tree.map(np.testing.assert_array_equal, trained[part], fresh[part])
  changed = jax.tree.leaves(jax.tree.map(lambda x, y: np.any(x != y), trained["connector"],
                                         fresh["connector"]))
  assert all(changed)

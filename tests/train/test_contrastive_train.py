"""Contrastive training through the trainer (`train.objective` clip / siglip) on the shapes set's
image-caption pairs: held-out zero-shot retrieval rises from chance, the learned temperature
(and SigLIP's bias) move, a locked image tower stays bit-identical (LiT), exact resume, and
steps on 8 devices (the captions gathered from every shard) equal the steps on one."""

import copy
import json
import os

import jax
import numpy as np
import pytest

from mmjax.train import data as train_data
from mmjax.train.cli import add_optional_keys, load_config
from mmjax.train.evaluate import shapes_retrieval
from mmjax.train.loop import Trainer, train
from tiny_train import final_state

STEPS = 300


def _cfg(kind, **train_kw):
  cfg = load_config(f"configs/tiny/contrastive.py:{kind}")
  add_optional_keys(cfg)
  for tower in (cfg.model.vision, cfg.model.text):
    tower.update(hidden_size=32, intermediate_size=64, num_heads=2)
  if kind == "clip":
    cfg.model.projection_dim = 32
  else:
    cfg.model.text.projection_size = 32
  cfg.data.batch_size = 32
  # One object (64 possible captions: learned in ~100 steps) drawn at varied sizes and offsets,
  # so the held-out images are many (one object alone makes only 64 images, 8 of them eval's).
  cfg.data.shapes.update(max_objects=1, jitter=1, size_range=2)
  # A constant rate after the warm-up: a shorter run's steps are the longer one's.
  cfg.optim.update(lr=3e-3, warmup_steps=10, end_lr_ratio=1.0)
  cfg.train.update({"steps": STEPS, "log_every": 50, **train_kw})
  cfg.eval.size = 200
  return cfg


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "loss" in r]


def _train(kind, tmp_path_factory):
  cfg = _cfg(kind)
  workdir = str(tmp_path_factory.mktemp(kind))
  summary = train(cfg, workdir)
  trainer, state = final_state(cfg, workdir)
  return cfg, summary, _rows(workdir), jax.device_get(trainer.init()), state, trainer


@pytest.fixture(scope="module")
def siglip_run(tmp_path_factory):
  return _train("siglip", tmp_path_factory)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
  return _train("clip", tmp_path_factory)


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_held_out_retrieval_rises_from_chance(kind, request):
  cfg, summary, rows, initial, _, trainer = request.getfixturevalue(f"{kind}_run")
  before = shapes_retrieval(trainer.module, initial.all_params(), cfg.data, size=200)
  after = {k: v for k, v in summary.items() if k.startswith("eval_retrieval/")}
  print(kind, "before", before, "after", after, "loss", rows[0]["loss"], "->", rows[-1]["loss"])
  for direction in ("image_to_text", "text_to_image"):
    before_value, after_value = (r[f"eval_retrieval/{direction}"] for r in (before, after))
    assert before_value < 0.1  # 64 captions, ~3 images each
    assert after_value > max(0.12, 3 * before_value)  # measured: 0.17-0.29 after 300 steps
  assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_temperature_and_bias_are_learned(kind, request):
  _, _, rows, initial, final, _ = request.getfixturevalue(f"{kind}_run")
  head0, head1 = initial.params["head"], final.params["head"]
  assert float(head1["logit_scale"]) != float(head0["logit_scale"])
  assert rows[-1]["temperature"] != pytest.approx(rows[0]["temperature"], abs=1e-4)
  if kind == "siglip":
    assert float(head0["logit_bias"]) == -10.0 and float(head1["logit_bias"]) != -10.0


def test_a_locked_image_tower_stays_bit_identical(tmp_path):
  """LiT: the text tower and the head train against a frozen image tower."""
  cfg = _cfg("siglip", steps=2, trainable=("text_encoder", "head"))
  cfg.eval.kind = ""
  train(cfg, str(tmp_path))
  trainer, final = final_state(cfg, str(tmp_path))
  initial = jax.device_get(trainer.init())
  assert sorted(final.frozen) == ["encoder"] and sorted(final.params) == ["head", "text_encoder"]
  for a, b in zip(jax.tree.leaves(final.frozen), jax.tree.leaves(initial.frozen)):
    np.testing.assert_array_equal(a, b)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(final.params),
                                              jax.tree.leaves(initial.params))]
  assert min(moved) > 0


def _strip(row):
  return {k: v for k, v in row.items() if not k.endswith(("_per_s", "_time_s"))}


def test_resume_is_exact(siglip_run, tmp_path):
  _, _, rows, _, _, _ = siglip_run
  cfg = _cfg("siglip", steps=4, log_every=1)
  cfg.eval.kind = ""
  workdir = str(tmp_path / "run")
  assert train(cfg, workdir, stop_after=2)["final_step"] == 2
  assert train(cfg, workdir)["start_step"] == 2
  assert [_strip(r) for r in _rows(workdir)] == [_strip(r) for r in rows[:4]]  # bit for bit


def test_one_device_equals_eight(clip_run):
  """The fixture's steps ran on 8 devices, each holding 4 of the 32 pairs: CLIP's
  caption-to-image softmax runs down columns spread over every shard."""
  cfg, _, rows, _, _, _ = clip_run
  cfg = copy.deepcopy(cfg)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  trainer = Trainer.build(cfg, jax.devices()[:1])
  it = train_data.make_train_iterator(cfg.data, trainer.model_config, cfg.seed,
                                      contrastive=trainer.contrastive)
  state = trainer.init()
  for step in range(2):
    with jax.set_mesh(trainer.mesh):
      state, metrics = trainer.step_fn(state, train_data.to_global(next(it), trainer.mesh))
    for name in ("loss", "accuracy/image_to_text", "temperature"):
      assert abs(float(metrics[name]) - rows[step][name]) <= 1e-5, (step, name)

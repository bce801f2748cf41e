"""BLIP-2 stage 1 through the trainer (`configs/tiny/blip2_stage1.py`, `train.objective=
'blip2_stage1'`) on the shapes set's image-caption pairs, on the 8 fake devices: ITC, ITM and ITG
fall (ITM, 1 positive to 2 hard negatives, from ln 2 towards the base rate's entropy 0.637 in
this short run), the frozen EVA tower stays bit-identical while every trained parameter moves."""

import json
import os

import jax
import numpy as np
import pytest

from mmjax.train.cli import add_optional_keys, load_config
from mmjax.train.loop import train
from tiny_train import final_state

STEPS = 150


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  cfg = load_config("configs/tiny/blip2_stage1.py")
  add_optional_keys(cfg)
  cfg.model.vision.update(hidden_size=32, intermediate_size=64, num_heads=2, num_layers=1)
  cfg.model.qformer.update(hidden_size=32, intermediate_size=64, num_heads=2, dropout=0.0)
  cfg.data.batch_size = 16
  cfg.data.shapes.update(max_objects=1)
  cfg.optim.update(lr=3e-3, warmup_steps=3, end_lr_ratio=1.0)
  cfg.train.update(steps=STEPS, log_every=1)
  workdir = str(tmp_path_factory.mktemp("blip2_stage1"))
  train(cfg, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if "loss" in r]
  trainer, state = final_state(cfg, workdir)
  return rows, jax.device_get(trainer.init()), state


def _mean(rows, key):
  return float(np.mean([r[key] for r in rows]))


def test_the_three_losses_fall(run):
  rows, _, _ = run
  assert len(rows) == STEPS and jax.device_count() == 8
  for key in ("loss_itc", "loss_itm", "loss_itg", "loss"):
    first, last = _mean(rows[:3], key), _mean(rows[-3:], key)
    print(f"{key}: {rows[0][key]:.4f} -> {rows[-1][key]:.4f} (first 3 {first:.4f}, last 3 "
          f"{last:.4f})")
    assert last < (first - 0.03 if key == "loss_itm" else 0.9 * first), (key, first, last)


def test_the_vision_tower_stays_bit_identical(run):
  _, initial, final = run
  assert sorted(final.frozen) == ["encoder"] and sorted(final.params) == ["head", "qformer"]
  for a, b in zip(jax.tree.leaves(final.frozen), jax.tree.leaves(initial.frozen)):
    np.testing.assert_array_equal(a, b)
  assert float(final.params["head"]["temp"]) != pytest.approx(0.07, abs=1e-6)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(final.params),
                                              jax.tree.leaves(initial.params))]
  assert min(moved) > 0

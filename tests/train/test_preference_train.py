"""Preference training through the trainer on shapes pairs (`pair_data`): the reference model is
the initial policy (step 1: loss log 2), frozen parts and the reference stay bit-identical, exact
resume, 8 devices equal one, precomputed reference columns equal the in-step reference, LoRA's
reference is the base model without a copy, MPO's running reward mean, and a tiny run raises
the reward accuracy on held-out pairs."""

import copy
import json
import math
import os

import jax
import numpy as np
import pytest

from mmjax import checkpoint as converted
from mmjax.data.pipeline import DataConfig, make_iterator
from mmjax.data.tokenizer import Tokenizer
from mmjax.train import data as train_data
from mmjax.train.loop import Trainer, train
from mmjax.train.model_files import model_files
from mmjax.train.preference_step import make_preference_eval, reference_logps
from pair_data import pair_config, write_pairs, write_tokenizer
from tiny_train import final_state

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")


PAIRS, STEPS = 384, 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pairs")
  tok = write_tokenizer(str(tmp / "tok"))
  return str(tmp), tok, write_pairs(str(tmp), "train", PAIRS)


def _cfg(files, **train_kw):
  tmp, tok, path = files
  cfg = pair_config(path, tok, **{"trainable": ("connector", "decoder"), "steps": STEPS,
                                  **train_kw})
  cfg.data.batch_size = 16
  # A constant rate after one warm-up step: a shorter run's steps are the longer one's.
  cfg.optim.update(lr=5e-3, warmup_steps=1, end_lr_ratio=1.0)
  return cfg


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def straight(files, tmp_path_factory):
  """DPO steps (the vision tower frozen): config, logged rows, initial and final states."""
  cfg = _cfg(files)
  workdir = str(tmp_path_factory.mktemp("dpo") / "straight")
  train(cfg, workdir)
  trainer, state = final_state(cfg, workdir)
  return cfg, _rows(workdir), jax.device_get(trainer.init()), state


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_reference_is_the_initial_policy_and_frozen_parts_stay_bit_identical(straight):
  _, rows, initial, final = straight
  assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)  # policy == reference
  # The policy and the reference are the same weights in two separately compiled forward
  # passes: their log-probabilities agree to float rounding, not necessarily to the bit.
  assert abs(rows[0]["rewards/margin"]) < 1e-6 and rows[0]["pairs"] == 16
  assert sorted(final.frozen) == ["encoder"] and sorted(final.reference) == ["connector",
                                                                             "decoder"]
  _assert_same_tree(final.frozen, initial.frozen)
  _assert_same_tree(final.reference, initial.params)  # the reference never trains
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(final.params),
                                              jax.tree.leaves(initial.params))]
  assert min(moved) > 0


def test_resume_is_exact(straight, files, tmp_path):
  _, rows, _, _ = straight
  cfg = _cfg(files, steps=4)
  workdir = str(tmp_path / "run")
  assert train(cfg, workdir, stop_after=2)["final_step"] == 2
  assert train(cfg, workdir)["start_step"] == 2
  strip = lambda r: {k: v for k, v in r.items() if not k.endswith(("_per_s", "_time_s"))}
  assert [strip(r) for r in _rows(workdir)] == [strip(r) for r in rows[:4]]  # bit for bit


def test_eight_devices_equal_one(straight):
  cfg, rows, _, _ = straight
  cfg = copy.deepcopy(cfg)
  cfg.mesh.update(data=2, fsdp=2, tensor=2, rules="fsdp_tp")
  trainer = Trainer.build(cfg, jax.devices())
  it = train_data.make_train_iterator(cfg.data, trainer.model_config, cfg.seed,
                                      trainer.preference)
  state = trainer.init()
  for step in range(3):
    with jax.set_mesh(trainer.mesh):
      state, metrics = trainer.step_fn(state, train_data.to_global(next(it), trainer.mesh))
    for name in METRICS:
      if name == "rewards/accuracy" and step < 2:
        # The first update has rate 0 (warm-up): steps 1 and 2 score the initial policy, whose
        # rewards are rounding noise (see above), so the share of pairs with chosen > rejected
        # is noise too. From step 3 the rewards are the trained policy's.
        continue
      assert abs(float(metrics[name]) - rows[step][name]) <= 1e-5, (step, name)


def test_precomputed_reference_columns_equal_the_in_step_reference(straight, files, tmp_path):
  cfg, rows, initial, _ = straight
  trainer = Trainer.build(cfg, jax.devices()[:1])
  # Each pair's reference log-probabilities, one pair per batch in file order.
  data = DataConfig.from_dict({**cfg.data.to_dict(), "pairs": True, "batch_size": 1,
                               "shuffle": False, "num_epochs": 1, "packing": False})
  compute = jax.jit(lambda s, b: reference_logps(trainer.module, trainer.preference, s, b)[0, :, 0])
  tmp, tok, _ = files
  columns = {i: tuple(float(x) for x in compute(initial, batch))
             for i, batch in enumerate(make_iterator(data, Tokenizer.load(tok)))}
  assert len(columns) == PAIRS
  path = write_pairs(os.path.join(tmp, "with_ref"), "train", PAIRS, reference=columns)
  precomputed = _cfg((tmp, tok, path), steps=4)
  precomputed.train.dpo.reference = "precomputed"
  workdir = str(tmp_path / "precomputed")
  train(precomputed, workdir)
  assert len(_rows(workdir)) == 4
  for got, want in zip(_rows(workdir), rows):
    for name in METRICS:
      assert abs(got[name] - want[name]) <= 1e-5, (got["step"], name, got[name], want[name])
  _, state = final_state(precomputed, workdir)
  assert state.reference == {}  # no copy of the model: the data holds the reference


def test_mpo_with_lora_keeps_the_running_reward_mean_and_the_base_as_reference(files, tmp_path):
  """MPO over two microbatches, LoRA on the decoder and the connector trained fully, from a
  converted checkpoint: the reference is that model without the adapter (the state copies only
  the connector, after loading it)."""
  base = _cfg(files)
  base.seed = 1  # not the run's random init: the reference must be what init_from loads
  trainer = Trainer.build(base, jax.devices()[:1])
  files_of = model_files(trainer.family, trainer.model_config, base.data)
  converted.save_checkpoint(str(tmp_path / "base"), trainer.family, trainer.model_config,
                            jax.device_get(trainer.init().all_params()),
                            hf_config=files_of.hf_config, hf_extras=files_of.extras)
  cfg = _cfg(files, objective="mpo", trainable=("connector",), steps=3, grad_accum=2,
             init_from=str(tmp_path / "base"))
  cfg.lora.update(rank=4, alpha=8.0, targets=("decoder/layers/attn/(q|v)",))
  workdir = str(tmp_path / "mpo")
  train(cfg, workdir)
  rows = _rows(workdir)
  # B = 0 and step 1's learning rate 0 (warm-up): policy == reference, every reward 0.
  assert rows[0]["loss/preference"] == pytest.approx(math.log(2), abs=1e-7)
  assert rows[0]["loss/quality"] == pytest.approx(2 * math.log(2), abs=1e-7)
  means = [(r["rewards/chosen"] + r["rewards/rejected"]) / 2 for r in rows]
  # Every microbatch holds 8 pairs: the mean of the microbatch means is the batch mean.
  for step in range(3):
    want = sum(means[:step + 1]) / (step + 1)
    assert rows[step]["rewards/shift"] == pytest.approx(want, abs=1e-6), step
  assert means[2] != 0 and all(r["loss/generation"] > 0 for r in rows)
  for r in rows:
    parts = (r["loss/preference"], r["loss/quality"], r["loss/generation"])
    assert r["loss"] == pytest.approx(
        sum(w * p for w, p in zip((0.8, 0.2, 1.0), parts)), rel=1e-5)
  trainer, state = final_state(cfg, workdir)
  assert sorted(state.reference) == ["connector"]  # what trains fully; the base is `frozen`
  initial = jax.device_get(trainer.init())
  _assert_same_tree(state.frozen, initial.frozen)
  _assert_same_tree(state.reference, {"connector": initial.params["connector"]})


def test_tiny_run_raises_held_out_reward_accuracy(straight, files):
  cfg, _, initial, final = straight
  tmp, tok, _ = files
  held_out = write_pairs(tmp, "held_out", 64, split="eval", seed=2)
  trainer = Trainer.build(cfg, jax.devices()[:1])
  evaluate = jax.jit(make_preference_eval(trainer.module, trainer.preference))
  data = DataConfig.from_dict({**cfg.data.to_dict(), "pairs": True, "shuffle": False,
                               "num_epochs": 1, "packing": False, "drop_remainder": False,
                               "sources": [{"path": held_out}], "batch_size": 64})
  batch = next(make_iterator(data, Tokenizer.load(tok)))
  before, after = (jax.device_get(evaluate(state, batch)) for state in (initial, final))
  print(f"held-out reward accuracy {before['rewards/accuracy']:.3f} -> "
        f"{after['rewards/accuracy']:.3f}; policy_accuracy {before['policy_accuracy']:.3f} -> "
        f"{after['policy_accuracy']:.3f}; margin {before['rewards/margin']:.3f} -> "
        f"{after['rewards/margin']:.3f}")
  assert before["pairs"] == 64 and before["rewards/accuracy"] == 0  # rewards 0: no pair won
  assert after["rewards/accuracy"] >= 0.8 and after["rewards/margin"] > 0.5
  assert after["policy_accuracy"] > before["policy_accuracy"] + 0.2

"""Llama 3.2 Vision through `mmjax train` (`configs/tiny/mllama.py`, the shapes set): 8 fake
devices, falling loss, exact resume, and the Llama 3.2 recipe (the language model frozen bit for
bit; the vision tower, the projector and the cross-attention layers train)."""

import json
import os
import re

import jax
import numpy as np

from mmjax.checkpoint import load_checkpoint
from mmjax.train.cli import load_config
from mmjax.train.loop import Trainer, train

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "configs", "tiny", "mllama.py")


def tiny_config(stage=None, steps=6):
  cfg = load_config(f"{CONFIG}:{stage}" if stage else CONFIG)
  cfg.data.batch_size = 16
  cfg.optim.warmup_steps = 1
  cfg.train.update(steps=steps, log_every=1)
  cfg.checkpoint.every_steps = 3
  return cfg


def losses_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_tiny_mllama_trains_on_8_devices_and_resumes_exactly(tmp_path):
  assert jax.device_count() == 8
  cfg = tiny_config()
  straight = train(cfg, str(tmp_path / "straight"))
  assert straight["final_step"] == 6 and straight["skipped"] == 0
  assert train(cfg, str(tmp_path / "resumed"), stop_after=3)["final_step"] == 3
  assert train(cfg, str(tmp_path / "resumed"))["start_step"] == 3
  a, b = losses_of(tmp_path / "straight"), losses_of(tmp_path / "resumed")
  assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]
  assert a[6] < a[1] and np.isfinite(list(a.values())).all()


def _paths(tree):
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_recipe_trains_cross_attention_with_the_language_model_frozen(tmp_path):
  # Three steps: the first (lr 0 at the warmup's start) leaves the zero-initialised gates shut,
  # so no gradient reaches the tower before the gates open in the second.
  cfg = tiny_config("recipe", steps=3)
  trainer = Trainer.build(cfg, jax.devices()[:1])
  trained_paths = _paths(trainer.abstract_state.params)
  cross = re.compile(r"decoder/layers(_\d+)?/cross_\d+/.*")
  assert trained_paths and all(p.startswith(("encoder/", "connector/")) or cross.fullmatch(p)
                               for p in trained_paths)
  assert any(cross.fullmatch(p) for p in trained_paths)  # the gates, projections, norms, MLP
  # No optimizer state for the frozen language model: the moments cover the trained leaves.
  moments = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state.opt_state))
  trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state.params))
  assert moments < 2 * trained + 16

  train(cfg, str(tmp_path / "recipe"))
  _, _, after = load_checkpoint(str(tmp_path / "recipe" / "model"))
  cfg.train.steps = 0
  train(cfg, str(tmp_path / "fresh"))
  _, _, before = load_checkpoint(str(tmp_path / "fresh" / "model"))
  after, before = _paths(after), _paths(before)
  for path, value in before.items():
    moved = bool(np.any(after[path] != value))
    if path.startswith("decoder/") and not cross.fullmatch(path):
      assert not moved, path  # the language model, bit for bit
    elif path.endswith(("attn_gate", "mlp_gate")) or path.startswith("encoder/"):
      assert moved, path  # the zero-initialised gates open; the tower trains

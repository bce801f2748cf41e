"""BLIP-2 stage 2 from stage 1's output (`configs/tiny/blip2_stage2.py`) on the 8 fake devices: a
few stage-1 steps, then stage 2 with `train.init_from` stage 1's model (the tower as is, its
Q-Former into the connector with the text embeddings and text feed-forwards dropped by name)
and a frozen random OPT checkpoint. The loaded parts equal their sources, the frozen ones stay
bit-identical, the language-modelling loss falls, and a stopped and resumed run ends with the
parameters of an uninterrupted one."""

import importlib.util
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import checkpoint as converted
from mmjax.models.registry import family_named
from mmjax.train.cli import add_optional_keys, load_config
from mmjax.train.loop import Trainer, train
from tiny_train import final_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGE2 = os.path.join(ROOT, "configs", "tiny", "blip2_stage2.py")
STEPS = 8
NARROW = dict(hidden_size=32, intermediate_size=64, num_heads=2)


def _selection() -> str:
  spec = importlib.util.spec_from_file_location("blip2_stage2", STAGE2)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.STAGE1_SELECTION


def _stage1(workdir: str) -> str:
  cfg = load_config(os.path.join(ROOT, "configs", "tiny", "blip2_stage1.py"))
  add_optional_keys(cfg)
  cfg.model.vision.update(num_layers=1, **NARROW)
  cfg.model.qformer.update(dropout=0.0, **NARROW)
  cfg.data.batch_size = 16
  cfg.train.update(steps=2, log_every=1)
  return train(cfg, workdir)["model_dir"]


def _decoder(cfg, path: str) -> str:
  """A random OPT (`causal_lm`) checkpoint of the config's decoder, its matrices scaled from the
  init's std 0.02 to about 1 / sqrt(width) as a trained model's are: at 0.02 the frozen
  decoder's logits hardly depend on its inputs (the loss stays at ln 64 whatever the image
  tokens carry)."""
  family, config = family_named("causal_lm"), Trainer.build(cfg, jax.devices()[:1]).model_config
  params = family.build(config.decoder).init(jax.random.PRNGKey(7),
                                             *family.example_inputs(config.decoder))["params"]
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 8 if p[-1].key in ("kernel", "embedding") else x, nn.unbox(params))
  converted.save_checkpoint(path, family, config.decoder, jax.device_get(params))
  return path


def _stage2_config(init_from: str):
  cfg = load_config(STAGE2)
  add_optional_keys(cfg)
  cfg.model.vision.update(num_layers=1, **NARROW)
  cfg.model.qformer.update(dropout=0.0, **NARROW)
  cfg.model.decoder.update(hidden_size=32, intermediate_size=64, num_heads=2, head_dim=16,
                           num_kv_heads=2)
  cfg.data.batch_size = 16
  cfg.optim.update(lr=1e-2, warmup_steps=1, end_lr_ratio=1.0)
  cfg.train.update(steps=STEPS, log_every=1, init_from=init_from)
  cfg.checkpoint.every_steps = 4
  return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("blip2_stage2")
  stage1 = _stage1(str(tmp / "stage1"))
  cfg = _stage2_config("")
  decoder = _decoder(cfg, str(tmp / "opt"))
  cfg.train.init_from = f"{stage1}:{_selection()};{decoder}:decoder"
  straight, resumed = str(tmp / "straight"), str(tmp / "resumed")
  summary = train(cfg, straight)
  assert train(cfg, resumed, stop_after=STEPS // 2)["final_step"] == STEPS // 2
  assert train(cfg, resumed)["start_step"] == STEPS // 2
  initial = jax.device_get(Trainer.build(cfg, jax.devices()[:1]).init())
  return dict(cfg=cfg, stage1=stage1, decoder=decoder, summary=summary, initial=initial,
              straight=straight, resumed=resumed)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _without(tree, names):
  return {k: _without(v, names) if isinstance(v, dict) else v for k, v in tree.items()
          if k not in names}


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_stage2_starts_from_stage1_and_the_decoder(runs):
  initial, source = runs["initial"], converted.load_params(runs["stage1"])
  assert sorted(initial.params) == ["connector"] and sorted(initial.frozen) == ["decoder",
                                                                                 "encoder"]
  _equal(initial.frozen["encoder"], source["encoder"])
  qformer = _without(source["qformer"], ("word_embed", "pos_embed", "ffn_text"))
  _equal(initial.params["connector"]["qformer"], qformer)
  _equal(initial.frozen["decoder"], converted.load_params(runs["decoder"])["decoder"])


def test_only_the_connector_trains_and_the_loss_falls(runs):
  assert jax.device_count() == 8
  losses = _losses(runs["straight"])
  first, last = np.mean([losses[s] for s in (1, 2)]), np.mean([losses[s] for s in (7, 8)])
  print(f"stage-2 loss {losses[1]:.4f} -> {losses[STEPS]:.4f}: {[losses[s] for s in sorted(losses)]}")
  # The answers through a frozen random OPT: a slow fall from ln 64 = 4.16.
  assert last < first - 0.1
  _, final = final_state(runs["cfg"], runs["straight"])
  _equal(final.frozen, runs["initial"].frozen)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(final.params),
                                              jax.tree.leaves(runs["initial"].params))]
  assert min(moved) > 0


def test_resume_is_exact(runs):
  a, b = _losses(runs["straight"]), _losses(runs["resumed"])
  assert [a[s] for s in range(1, STEPS + 1)] == [b[s] for s in range(1, STEPS + 1)]
  _equal(final_state(runs["cfg"], runs["straight"])[1].params,
         final_state(runs["cfg"], runs["resumed"])[1].params)
  # The final model is a `blip-2` of its own (no HF details taken from the stage-1 model).
  family, _, _ = converted.read_metadata(os.path.join(runs["straight"], "model"))
  assert family.name == "blip-2"

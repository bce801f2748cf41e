"""Trainer: sharded meshes equal one device, frozen parts stay put, resume is exact, SIGTERM
checkpoints, non-finite steps are skipped, weight decay reaches matrices only."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.cli import main as mmjax_main
from mmjax.models.registry import family_named
from mmjax.train import data as train_data
from mmjax.train.cli import apply_overrides, load_config
from mmjax.train.loop import Trainer, train
from tiny_train import tiny_config


def batches(cfg, trainer, n):
  it = train_data.make_train_iterator(cfg.data, trainer.model_config, cfg.seed)
  return [next(it) for _ in range(n)]


def run_steps(cfg, devices, host_batches):
  trainer = Trainer.build(cfg, devices)
  state = trainer.init()
  losses = []
  for b in host_batches:
    with jax.set_mesh(trainer.mesh):
      state, metrics = trainer.step_fn(state, train_data.to_global(b, trainer.mesh))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state)


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=4, tensor=2, rules="fsdp_tp"),
                                  dict(data=8, fsdp=1, tensor=1, rules="fsdp")])
def test_sharded_training_matches_one_device(mesh):
  assert jax.device_count() == 8
  cfg = tiny_config()
  host_batches = batches(cfg, Trainer.build(cfg, jax.devices()[:1]), 3)
  ref_losses, ref_state = run_steps(cfg, jax.devices()[:1], host_batches)
  cfg.mesh.update(mesh)
  losses, state = run_steps(cfg, jax.devices(), host_batches)
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  assert ref_losses[-1] < ref_losses[0]


def test_frozen_components_stay_bit_identical_and_have_no_optimizer_state():
  cfg = tiny_config(trainable=("connector",))
  trainer = Trainer.build(cfg, jax.devices()[:1])
  start = jax.device_get(trainer.init())
  _, state = run_steps(cfg, jax.devices()[:1], batches(cfg, trainer, 3))
  assert sorted(state.params) == ["connector"] and sorted(state.frozen) == ["decoder", "encoder"]
  for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(start.frozen)):
    np.testing.assert_array_equal(a, b)
  opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state) if hasattr(x, "size"))
  connector = sum(x.size for x in jax.tree.leaves(state.params))
  assert opt_leaves <= 2 * connector + 8  # Adam's two moments of the connector, and counters
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(start.params)))


def test_gradient_accumulation_equals_one_big_batch():
  cfg = tiny_config()
  host_batches = batches(cfg, Trainer.build(cfg, jax.devices()[:1]), 2)
  ref_losses, ref_state = run_steps(cfg, jax.devices()[:1], host_batches)
  cfg.train.grad_accum = 4
  losses, state = run_steps(cfg, jax.devices()[:1], host_batches)
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_unrolled_layers_train_like_the_scan():
  cfg = tiny_config()
  # Three layers: the loss runs the last one itself, and a stack of one is no loop either way.
  cfg.model.decoder.num_layers = 3
  host_batches = batches(cfg, Trainer.build(cfg, jax.devices()[:1]), 3)
  ref_losses, ref_state = run_steps(cfg, jax.devices()[:1], host_batches)
  cfg.train.unroll_layers = True
  losses, state = run_steps(cfg, jax.devices()[:1], host_batches)
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)

  def while_loops(unroll):  # the scans over layers are gone, not merely equal
    cfg.train.unroll_layers = unroll
    trainer = Trainer.build(cfg, jax.devices()[:1])
    batch = train_data.to_global(host_batches[0], trainer.mesh)
    with jax.set_mesh(trainer.mesh):
      return trainer.step_fn.lower(trainer.init(), batch).as_text().count("stablehlo.while")
  assert while_loops(True) < while_loops(False)


def test_non_finite_batch_is_skipped_and_counted():
  cfg = tiny_config()
  trainer = Trainer.build(cfg, jax.devices()[:1])
  state = trainer.init()
  before = jax.device_get(state)
  good, bad = batches(cfg, trainer, 2)
  bad = dict(bad, pixel_values=np.full_like(bad["pixel_values"], np.nan))
  with jax.set_mesh(trainer.mesh):
    state, metrics = trainer.step_fn(state, train_data.to_global(bad, trainer.mesh))
  assert not np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 1
  after = jax.device_get(state)
  assert int(after.step) == 0
  for a, b in zip(jax.tree.leaves(after.params) + jax.tree.leaves(after.opt_state),
                  jax.tree.leaves(before.params) + jax.tree.leaves(before.opt_state)):
    np.testing.assert_array_equal(a, b)
  with jax.set_mesh(trainer.mesh):
    state, metrics = trainer.step_fn(state, train_data.to_global(good, trainer.mesh))
  assert np.isfinite(float(metrics["loss"])) and int(jax.device_get(state.step)) == 1


def losses_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def logged_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["step"] for r in map(json.loads, f) if "loss" in r]


def test_resume_logs_the_same_losses_bit_for_bit(tmp_path):
  """Rows buffered under log_every when the run stops are written (with the checkpoint), and the
  rows a killed run logged after its last checkpoint (here faked, one cut short) are replaced."""
  cfg = tiny_config(steps=12, log_every=5)
  cfg.checkpoint.every_steps = 4
  cfg.checkpoint.keep = 2
  straight = train(cfg, str(tmp_path / "straight"))
  assert straight["final_step"] == 12
  assert straight["plot"] == os.path.join(tmp_path / "straight", "plot.png")  # a finished run's
  assert os.path.getsize(straight["plot"]) > 1000
  stopped = train(cfg, str(tmp_path / "resumed"), stop_after=8)
  assert stopped["final_step"] == 8 and "plot" not in stopped
  assert logged_steps(tmp_path / "resumed") == list(range(1, 9))  # 6-8 were under log_every
  with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:  # logged, then killed at 10
    f.write('{"step": 9, "loss": 1.0}\n{"step": 10, "loss": 1.0}\n{"step": 11, "lo')
  summary = train(cfg, str(tmp_path / "resumed"))
  assert summary["start_step"] == 8
  straight, resumed = losses_of(tmp_path / "straight"), losses_of(tmp_path / "resumed")
  assert logged_steps(tmp_path / "resumed") == list(range(1, 13))  # each step once
  assert [straight[s] for s in range(1, 13)] == [resumed[s] for s in range(1, 13)]


def test_sigterm_writes_a_checkpoint_and_resume_continues(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = ["--config.train.steps=100000", "--config.checkpoint.every_steps=100000",
               "--config.train.log_every=1", "--config.model.decoder.num_layers=1",
               "--config.model.vision.num_layers=1", "--config.data.batch_size=8"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "mmjax.cli", "train", "--workdir", workdir,
                           *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics)):
    time.sleep(0.5)
  assert proc.poll() is None, proc.stdout.read().decode()
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 143, out
  assert "preempted" in out
  saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert saved and max(saved) >= 1, out


def test_config_overrides_and_errors():
  cfg = load_config(None)
  apply_overrides(cfg, ["--config.optim.lr=1e-4", "--config.train.steps", "7",
                        "--config.train.trainable=('connector',)", "--config.optim.clip_norm=2",
                        "--config.train.log_every=1e2"])
  assert cfg.optim.lr == 1e-4 and cfg.train.steps == 7 and cfg.train.trainable == ("connector",)
  assert cfg.optim.clip_norm == 2.0 and cfg.train.log_every == 100
  with pytest.raises(ValueError, match="no such key"):
    apply_overrides(cfg, ["--config.optim.nope=1"])
  assert mmjax_main(["train", "--config", "/nonexistent.py", "--workdir", "/tmp/x"]) == 1


@pytest.mark.parametrize("override,message", [
    ("--config.train.steps=abc", "--config.train.steps=abc: expected an integer, got 'abc'"),
    ("--config.train.steps=2.5", "expected an integer, got '2.5'"),
    ("--config.optim.lr=fast", "--config.optim.lr=fast: expected a number, got 'fast'"),
    ("--config.train.steps=-5", "train.steps must be an integer >= 1, got -5"),
    ("--config.train.steps=0", "train.steps must be an integer >= 1, got 0"),
    ("--config.checkpoint.every_steps=0", "checkpoint.every_steps must be an integer >= 1"),
    ("--config.data.batch_size=-8", "data.batch_size must be an integer >= 1"),
])
def test_bad_values_are_one_line_before_anything_is_written(tmp_path, capsys, override, message):
  workdir = tmp_path / "run"
  assert mmjax_main(["train", "--workdir", str(workdir), override]) == 1
  err = capsys.readouterr().err
  assert err.startswith("mmjax train: error: ") and message in err, err
  assert err.count("\n") == 1 and not workdir.exists(), err


@pytest.mark.parametrize("source,message", [
    ("def get_config(arg=None):\n  width = 64\n  return width / 0\n",
     "failed at line 3: ZeroDivisionError: division by zero"),
    ("def get_config(arg=None:\n  pass\n", "failed at line 1: SyntaxError"),
    ("import not_a_module\n", "failed at line 1: ModuleNotFoundError"),
    ("def get_config(arg=None):\n  return [1, 2]\n", "get_config() returned a list"),
    ("x = 1\n", "has no get_config()"),
])
def test_a_config_file_that_fails_is_one_line(tmp_path, capsys, source, message):
  path = tmp_path / "cfg.py"
  path.write_text(source)
  assert mmjax_main(["train", "--config", str(path), "--workdir", str(tmp_path / "run")]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"mmjax train: error: ") and message in err and err.count("\n") == 1, err


def test_help_prints_percent_signs_once(capsys):
  with pytest.raises(SystemExit):
    mmjax_main(["train", "--help"])
  out = capsys.readouterr().out
  assert ">= 90% held-out" in " ".join(out.split()) and "%%" not in out


def test_stage1_init_from_separate_tower_and_language_model(tmp_path, capsys):
  """LLaVA stage 1: a converted CLIP tower and LLM, a fresh connector, only it trained."""
  import torch
  import transformers
  from hf_models import clip_vision_config, save, text_config

  from mmjax.checkpoint import load_params
  from mmjax.convert.importer import convert_hf

  torch.manual_seed(0)
  tower = transformers.CLIPVisionModel(clip_vision_config(
      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
      image_size=32, patch_size=16))
  llm = transformers.LlamaForCausalLM(text_config(
      vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4,
      num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, tie_word_embeddings=True))
  ckpts = []
  for name, model in (("tower", tower), ("llm", llm)):
    convert_hf(save(model, str(tmp_path / f"{name}_hf")), str(tmp_path / name), progress=False)
    ckpts.append(str(tmp_path / name))

  cfg = tiny_config(steps=2, trainable=("connector",), init_from=",".join(ckpts))
  cfg.model.vision.update(kind="clip", activation="quick_gelu", layer_norm_eps=1e-5)
  stage1 = train(cfg, str(tmp_path / "stage1"))
  assert "loaded ['decoder', 'encoder']; randomly initialised ['connector']" in \
      capsys.readouterr().out
  trained = load_params(stage1["model_dir"])
  for ckpt, name in zip(ckpts, ("encoder", "decoder")):  # frozen: bit for bit the sources
    for a, b in zip(jax.tree.leaves(trained[name]), jax.tree.leaves(load_params(ckpt)[name])):
      np.testing.assert_array_equal(a, b)

  # Stage 2 starts from stage 1's model (all of it) and trains the connector and the decoder.
  cfg.train.update(init_from=stage1["model_dir"], trainable=("connector", "decoder"))
  trainer = Trainer.build(cfg, jax.devices()[:1])
  state = jax.device_get(trainer.init())
  assert "randomly initialised []" in capsys.readouterr().out
  assert sorted(state.params) == ["connector", "decoder"]
  for a, b in zip(jax.tree.leaves(state.params["connector"]),
                  jax.tree.leaves(trained["connector"])):
    np.testing.assert_array_equal(a, b)

  cfg.train.init_from = ",".join(ckpts)
  cfg.model.vision.hidden_size = 64  # a tower that does not fit: the error names the leaf
  with pytest.raises(ValueError, match="'encoder' does not match the model at"):
    Trainer.build(cfg, jax.devices()[:1]).init()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(os.path.relpath(os.path.join(d, f), ROOT)
                 for d, _, files in os.walk(os.path.join(ROOT, "configs"))
                 for f in files if f.endswith(".py"))


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_loads_and_has_the_common_keys(path):
  cfg = load_config(os.path.join(ROOT, path))
  assert cfg.train.steps > 0 and cfg.checkpoint.every_steps > 0
  family = family_named(cfg.model.get("family", "llava"))
  assert set(cfg.train.trainable) <= set(family.part_names())


def test_batch_that_does_not_split_over_the_mesh_is_a_clear_error():
  cfg = tiny_config()
  cfg.data.batch_size = 12
  with pytest.raises(ValueError, match="batch_size 12 does not split over the 8 batch shards"):
    Trainer.build(cfg, jax.devices())


def _decayed(trainer: Trainer, state) -> dict[str, bool]:
  """Which trainable leaves one update with zero gradients moves: with nothing to follow,
  AdamW moves only what it decays."""
  params = state.params
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = trainer.tx.update(zeros, state.opt_state, params, grad_norm=jnp.float32(0.0))
  flat = jax.tree_util.tree_leaves_with_path(updates)
  return {jax.tree_util.keystr(path): bool(jnp.any(u != 0)) for path, u in flat}


@pytest.mark.parametrize("multipliers", [{}, {"encoder": 0.1}])
def test_weight_decay_goes_to_matrices_of_each_layer(multipliers):
  cfg = tiny_config()
  cfg.optim.update(weight_decay=0.1, warmup_steps=0, lr_multipliers=multipliers)
  trainer = Trainer.build(cfg, jax.devices()[:1])
  decayed = _decayed(trainer, trainer.init())

  # Stacked layers: the [L, D] norm scales and [L, ...] biases are vectors per layer.
  stacked_vectors = [p for p in decayed if "['layers']" in p and ("scale" in p or "bias" in p)]
  stacked_matrices = [p for p in decayed if "['layers']" in p and "kernel" in p]
  assert stacked_vectors and stacked_matrices
  assert not any(decayed[p] for p in stacked_vectors), stacked_vectors
  assert all(decayed[p] for p in stacked_matrices), stacked_matrices
  # Outside the stacks: the embedding table and projections decay, the final norm does not.
  assert decayed["['decoder']['embed']['embedding']"]
  assert decayed["['connector']['linear_1']['kernel']"]
  assert not decayed["['decoder']['norm']['scale']"]
  assert not decayed["['connector']['linear_1']['bias']"]

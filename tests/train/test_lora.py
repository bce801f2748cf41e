"""LoRA (`mmjax.nn.lora`) through the trainer: unchanged model at init, scanned and logically
sharded factors, frozen base weights without optimizer state, 8 devices equal one, exact resume,
the adapter on disk and its merged export loading in transformers with the same logits; partial
LoRA leaves text-only rows bit-identical."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from mmjax import checkpoint as converted
from mmjax.cli import main as mmjax_main
from mmjax.decoders.config import DecoderConfig
from mmjax.models.standalone import CausalLM
from mmjax.nn import lora
from mmjax.train import adapters
from mmjax.train import data as train_data
from mmjax.train.cli import add_optional_keys
from mmjax.train.loop import Trainer, train
from mmjax.train.model_files import model_files
from mmjax.train.parts import merge
from tiny_train import final_state, tiny_config

TARGETS = ("decoder/layers/(attn/(q|k|v|o)|mlp/(gate|up|down))",)
LM = DecoderConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_layers=2,
                   num_heads=2, num_kv_heads=1, head_dim=8)


def _strip(tree):
  return {k: _strip(v) if isinstance(v, dict) else v for k, v in tree.items()
          if k not in lora.FACTORS}


def test_factors_are_scanned_sharded_zero_update_and_merge():
  config = lora.LoraConfig(rank=3, alpha=6.0, targets=TARGETS)
  module = CausalLM(LM)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 48, (2, 7)), jnp.int32)
  pos = jnp.tile(jnp.arange(7), (2, 1))
  with lora.applied(config):
    boxed = jax.jit(module.init)(jax.random.PRNGKey(0), ids, pos)["params"]
  q = boxed["decoder"]["layers"]["attn"]["q"]  # kernel [L, N, H, D]
  assert q["lora_a"].names == ("layers", "embed", "lora_rank") and q["lora_a"].value.shape == (2, 16, 3)
  assert q["lora_b"].names == ("layers", "lora_rank", "heads", "head_dim")
  assert not np.any(q["lora_b"].value)
  bound = 1 / np.sqrt(16)  # peft's Kaiming-uniform A: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  assert 0.6 * bound < np.abs(q["lora_a"].value).max() <= bound
  params = nn.unbox(boxed)
  apply = jax.jit(lambda p: module.apply({"params": p}, ids, pos).logits)
  base = apply(_strip(params))
  with lora.applied(config):
    np.testing.assert_array_equal(apply(params), base)  # B = 0: the same model, bit for bit
  # Trained factors: the LoRA forward equals the merged weights' (W + alpha/r A B).
  trained = jax.tree_util.tree_map_with_path(
      lambda path, x: (x + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(path))), x.shape)
                       if path[-1].key == "lora_b" else x), params)
  with lora.applied(config) as recorder:
    jax.eval_shape(module.init, jax.random.PRNGKey(0), ids, pos)
    got = apply(trained)
  assert not np.allclose(got, base, atol=1e-3)
  np.testing.assert_allclose(apply(lora.merge(trained, recorder.layouts, config)), got,
                             atol=1e-5, rtol=1e-5)


def test_remat_saves_no_update_and_gradients_match_merged():
  # LoRA's update `h @ B` [B, T, out] is recomputed in the backward, never a saved residual:
  # under `dots` remat each layer keeps the base projections' outputs and only the 7 `h`
  # [B, T, r] beside them (saving the update too cost the 7B DPO step 35 GiB per chip).
  config = lora.LoraConfig(rank=5, alpha=10.0, targets=TARGETS)
  module = CausalLM(dataclasses.replace(LM, remat_policy="dots"))
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 48, (2, 7)), jnp.int32)
  pos = jnp.tile(jnp.arange(7), (2, 1))
  with lora.applied(config) as recorder:
    params = nn.unbox(module.init(jax.random.PRNGKey(0), ids, pos)["params"])
  params = jax.tree_util.tree_map_with_path(  # B != 0: the update's gradients reach A
      lambda path, x: x + 0.3 if path[-1].key == "lora_b" else x, params)
  base = lora.without_factors(params)

  def loss(full_params, lora_config):
    with lora.applied(lora_config):
      return jnp.sum(jnp.sin(module.apply({"params": full_params}, ids, pos).logits))

  def layer_residuals(fn, arg):  # the scanned stack's saved activations [L, B, T, ...]
    saved = jax.tree.leaves(jax.eval_shape(lambda a: jax.vjp(fn, a)[1], arg))
    return sorted(x.shape for x in saved if x.shape[:3] == (2, 2, 7))

  factors = lora.adapter(params)
  plain = layer_residuals(lambda p: loss(p, None), base)
  adapted = layer_residuals(lambda f: loss(merge(f, base), config), factors)
  assert sorted(plain + [(2, 2, 7, 5)] * 7) == adapted
  # The custom backward is the true gradient: that of the merged weights W + alpha/r A B.
  grads = jax.jit(jax.grad(lambda f: loss(merge(f, base), config)))(factors)
  merged = jax.jit(jax.grad(
      lambda f: loss(lora.merge(merge(f, base), recorder.layouts, config), None)))(factors)
  jax.tree.map(lambda g, m: np.testing.assert_allclose(g, m, rtol=0, atol=1e-4), grads, merged)


def test_unmatched_target_and_fully_trained_component_are_named():
  cfg = _lora_cfg(trainable=("connector",))
  cfg.lora.targets = ("decoder/layers/attn/q_proj",)
  with pytest.raises(ValueError, match="q_proj.*matches no linear layer.*decoder/layers/attn/q"):
    Trainer.build(cfg, jax.devices()[:1])
  cfg = _lora_cfg(trainable=("connector", "decoder"))
  with pytest.raises(ValueError, match="train.trainable trains fully"):
    Trainer.build(cfg, jax.devices()[:1])


def _lora_cfg(**train_kw):
  cfg = tiny_config(**{"trainable": ("connector",), **train_kw})
  add_optional_keys(cfg)
  cfg.lora.update(rank=4, alpha=8.0, targets=TARGETS)
  cfg.optim.update(lr=2e-2, warmup_steps=1)
  return cfg


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
  """A converted tiny LLaVA (random weights, with HF details) to adapt: `train.init_from`."""
  cfg = tiny_config()
  trainer = Trainer.build(cfg, jax.devices()[:1])
  path = str(tmp_path_factory.mktemp("lora") / "base")
  files = model_files(trainer.family, trainer.model_config, cfg.data)
  converted.save_checkpoint(path, trainer.family, trainer.model_config,
                            jax.device_get(trainer.init().all_params()),
                            hf_config=files.hf_config, hf_extras=files.extras)
  return path


def _logged_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def straight(base_model, tmp_path_factory):
  """4 steps of LoRA on the decoder + the connector trained fully, from `base_model`: the
  config, the logged losses, the final train state and the run's directory."""
  cfg = _lora_cfg(init_from=base_model, steps=4)
  workdir = str(tmp_path_factory.mktemp("lora") / "straight")
  train(cfg, workdir)
  _, state = final_state(cfg, workdir)
  return cfg, _logged_losses(workdir), state, workdir


def test_base_frozen_without_optimizer_state_and_loss_goes_down(straight, base_model):
  _, losses, state, _ = straight
  assert sorted(state.params) == ["connector", "decoder"]
  decoder_leaves = {path[-1].key for path, _ in
                    jax.tree_util.tree_leaves_with_path(state.params["decoder"])}
  assert decoder_leaves == {"lora_a", "lora_b"}  # the decoder trains its factors alone
  base = converted.load_params(base_model)
  frozen = jax.tree_util.tree_leaves_with_path(state.frozen)
  assert len(frozen) == len(jax.tree.leaves(base)) - len(jax.tree.leaves(state.params["connector"]))
  for path, leaf in frozen:  # the base weights, bit for bit
    np.testing.assert_array_equal(leaf, _at(base, path))
  trained = sum(x.size for x in jax.tree.leaves(state.params))
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if hasattr(x, "size"))
  assert moments <= 2 * trained + 8  # Adam's moments of the factors and the connector alone
  assert losses[-1] < losses[0] - 0.05, losses


def _at(tree, path):
  return _at_keys(tree, [k.key for k in path])


def test_eight_devices_equal_one(straight):
  cfg, losses, _, _ = straight
  cfg = _lora_cfg(init_from=cfg.train.init_from, steps=4)
  cfg.mesh.update(data=1, fsdp=4, tensor=2, rules="fsdp_tp")
  trainer = Trainer.build(cfg, jax.devices())
  it = train_data.make_train_iterator(cfg.data, trainer.model_config, cfg.seed)
  state = trainer.init()
  for step in range(2):
    with jax.set_mesh(trainer.mesh):
      state, metrics = trainer.step_fn(state, train_data.to_global(next(it), trainer.mesh))
    np.testing.assert_allclose(float(metrics["loss"]), losses[step], atol=1e-5, rtol=0)
  a = state.params["decoder"]["layers"]["attn"]["q"]["lora_a"]
  assert len(a.sharding.device_set) == 8  # [L, D, r]: D over fsdp
  b = state.params["decoder"]["layers"]["attn"]["q"]["lora_b"]  # [L, r, N, H]: no D to shard
  assert b.sharding.spec[:3] == (None, "fsdp", "tensor")  # r = 4 over fsdp 4
  b_opt = [x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
           if [getattr(k, "key", None) for k in p[-2:]] == ["q", "lora_b"]]  # Adam's moments
  assert b_opt and all(x.sharding.spec[:3] == (None, "fsdp", "tensor") for x in b_opt)


def test_a_rank_that_fsdp_does_not_divide_is_replicated():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(8), ("fsdp",))
  spec = jax.sharding.PartitionSpec
  shardings = {"lora_b": jax.sharding.NamedSharding(mesh, spec(None, "fsdp", None)),
               "lora_a": jax.sharding.NamedSharding(mesh, spec(None, "fsdp", None)),
               "kernel": jax.sharding.NamedSharding(mesh, spec(None, "fsdp"))}
  abstract = {"lora_b": jax.ShapeDtypeStruct((2, 3, 16), jnp.float32),  # rank 3 on fsdp 8
              "lora_a": jax.ShapeDtypeStruct((2, 16, 3), jnp.float32),  # embed 16 on fsdp 8
              "kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32)}  # not a factor: as it was
  fitted = adapters.fit_shardings(shardings, abstract)
  assert fitted["lora_b"].spec == spec(None, None, None)
  assert fitted["lora_a"].spec == spec(None, "fsdp", None)
  assert fitted["kernel"] == shardings["kernel"]


def test_resume_is_exact_and_the_merged_export_matches_transformers(straight, tmp_path):
  import torch
  import transformers

  cfg, ref_losses, _, _ = straight
  workdir = str(tmp_path / "run")
  assert train(cfg, workdir, stop_after=2)["final_step"] == 2
  summary = train(cfg, workdir)
  assert summary["start_step"] == 2
  assert _logged_losses(workdir) == ref_losses  # the straight run's, bit for bit
  adapter_dir = os.path.join(workdir, "adapter")
  config, trained, meta = adapters.load_adapter(adapter_dir)
  assert config.rank == 4 and meta["base"] == cfg.train.init_from
  assert sorted(trained) == ["connector", "decoder"]  # trained and the fully trained connector
  assert {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(trained["decoder"])} == \
      {"lora_a", "lora_b"}

  out = str(tmp_path / "hf")
  assert mmjax_main(["export", "--checkpoint", cfg.train.init_from, "--merge-lora", adapter_dir,
                     "--out", out, "--quiet"]) == 0
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".merge-lora")]
  hf = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  family, model_config, params = converted.load_checkpoint(summary["model_dir"])  # merged too
  rng = np.random.default_rng(0)
  ids = rng.integers(4, 40, (2, 12))
  ids[0, 2:2 + model_config.tokens_per_image] = model_config.image_token_id
  v = model_config.vision
  inputs = {"input_ids": ids, "pixel_values": rng.normal(
      size=(1, v.num_channels, v.image_size, v.image_size)).astype(np.float32)}
  _, _, base = converted.load_checkpoint(cfg.train.init_from)
  with lora.applied(config):  # mmjax's LoRA model: base weights and trained
    want = family.forward_from_hf_inputs(
        model_config, adapters.parts_lib.merge(trained, base), inputs)
  with torch.no_grad():
    got = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(inputs["pixel_values"])
             ).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # DIR/model holds the same merge; the factors trained away from zero (B != 0).
  merged = adapters.merged(family, model_config, adapters.parts_lib.merge(trained, base), config)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(merged)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  q = ("decoder", "layers", "attn", "q", "kernel")
  assert np.abs(_at_keys(params, q) - _at_keys(base, q)).max() > 1e-3


def _at_keys(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree


def test_partial_lora_touches_image_positions_only(base_model):
  """Text-only rows give the base model's logits bit for bit; in a row with an image, positions
  before it too (causal), and the image's positions on differ."""
  family, model_config, base = converted.load_checkpoint(base_model)
  config = lora.LoraConfig(rank=2, alpha=4.0, targets=TARGETS, positions="image")
  module = family.build(model_config)
  rng = np.random.default_rng(0)
  n = model_config.tokens_per_image
  ids = rng.integers(4, 40, (2, 16)).astype(np.int32)
  ids[1, 5:5 + n] = model_config.image_token_id
  v = model_config.vision
  batch = {"input_ids": jnp.asarray(ids), "positions": jnp.tile(jnp.arange(16), (2, 1)),
           "attention_mask": jnp.ones((2, 16), jnp.int32),
           "segment_ids": jnp.ones((2, 16), jnp.int32),
           "pixel_values": jnp.asarray(rng.normal(size=(2, v.image_size, v.image_size, 3)),
                                       jnp.float32),
           "image_mask": jnp.asarray([False, True])}
  with lora.applied(config, jnp.asarray(ids == model_config.image_token_id)):
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(1), batch["input_ids"],
                            batch["pixel_values"], batch["positions"],
                            image_valid=batch["image_mask"])["params"]
  # Trained-looking factors (B != 0), drawn here: compiling the init would take ~10 s.
  factors = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype),
                         lora.adapter(nn.unbox(shapes)))
  params = adapters.parts_lib.merge(factors, base)
  from mmjax.train.step import forward

  step = jax.jit(lambda p, b, c: forward(module, p, b, lora=c), static_argnums=2)
  run = lambda p, c: step(p, batch, c)
  want = np.asarray(run(base, None))
  got = np.asarray(run(params, config))
  np.testing.assert_array_equal(got[0], want[0])  # text only: untouched
  # In the image row, the text before the image too (a full update would change it: the mask
  # works per position, not per row), and every position from the image on differs.
  np.testing.assert_array_equal(got[1, :5], want[1, :5])
  assert np.abs(got[1, 5:] - want[1, 5:]).max(axis=-1).min() > 1e-4

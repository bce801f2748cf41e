"""Cross-attention of text queries to image keys: the `CrossMaskSpec` rule, the einsum path
against a float64 numpy reference, the splash kernel (Pallas interpreter) against the einsum
path (values, gradients, under a mesh with shard_map), and the `CrossAttention` layer against
transformers' `MllamaTextCrossAttention`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh
from transformers.models.mllama import modeling_mllama
from transformers.models.mllama.configuration_mllama import MllamaTextConfig

from hf_models import TOLERANCE, add_noise, max_diff, record
from mmjax import sharding as shd
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import TEXT_AXES
from mmjax.nn.cross_attention import CrossAttention
from mmjax.nn.mask_spec import CrossMaskSpec
from mmjax.nn.masks import tile_cross_attention_mask, unmask_empty_rows

T, S = 150, 200  # neither a multiple of the kernel's 128 lanes


def _qkv(b, t, s, n, k, h, seed=0):
  r = np.random.default_rng(seed)
  q = r.normal(size=(b, t, n, h))
  return [jnp.asarray(x, jnp.float32) for x in (q, r.normal(size=(b, s, k, h)),
                                                r.normal(size=(b, s, k, h)))]


def _groups(b=2):
  """`q_group [b, T]`, `k_group [b, S]`: row 0 has three images, each followed by padding tiles,
  text that sees no image before the first, and queries of a group without keys; row 1 one image,
  then right padding (text and keys); further rows repeat row 1 with every query seeing it."""
  q, k = np.full((b, T), -1), np.full((b, S), -1)
  q[0, 7:50], q[0, 50:100], q[0, 100:140], q[0, 140:] = 0, 1, 2, 9  # nobody has group 9's keys
  k[0, :40], k[0, 64:120], k[0, 130:190] = 0, 1, 2  # the gaps are padding tiles
  q[1, 3:130], k[1, :120] = 0, 0
  q[2:], k[2:] = 0, k[1]
  return jnp.asarray(q), jnp.asarray(k)


def _rule_np(q_group, k_group):
  """`[B, 1, T, S]` from the rule as stated, query by query."""
  q_group, k_group = np.asarray(q_group), np.asarray(k_group)
  allowed = np.ones(q_group.shape + k_group.shape[1:], bool)
  for b, t in np.ndindex(q_group.shape):
    same = k_group[b] == q_group[b, t]
    if q_group[b, t] >= 0 and same.any():
      allowed[b, t] = same
  return allowed[:, None]


def _attention_np(q, k, v, allowed, scale):
  """float64 softmax attention; `allowed [B, 1|N, T, S]` has at least one True per row."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  group = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # transformers' repeat_kv
  logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
  logits = np.where(np.asarray(allowed), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", probs, v)


def test_spec_rule_by_hand():
  spec = CrossMaskSpec(jnp.asarray([[-1, 0, 1, 7]]), jnp.asarray([[0, 0, -1, 1, -1]]))
  want = np.array([[1, 1, 1, 1, 1],  # sees no image: every key, padding ones included
                   [1, 1, 0, 0, 0],  # group 0
                   [0, 0, 0, 1, 0],  # group 1
                   [1, 1, 1, 1, 1]], bool)  # group 7 has no keys: every key (no empty row)
  np.testing.assert_array_equal(spec.dense(4, 5)[0, 0], want)
  np.testing.assert_array_equal(spec.sees_keys()[0], [False, True, True, False])
  with pytest.raises(ValueError, match="4 queries x 5 keys"):
    spec.dense(4, 6)
  q, k, v = _qkv(1, 4, 6, 2, 2, 8)
  with pytest.raises(ValueError, match="CrossMaskSpec groups"):
    dot_product_attention(q, k, v, spec, scale=1.0, backend="splash_interpret")


def test_tile_mask_matches_mllama():
  """Mllama's processor array `[B, T, images, tiles]` -> the bias transformers adds (0 where
  allowed), rows that see nothing included."""
  r = np.random.default_rng(3)
  tiles = (r.random((2, 9, 2, 4)) < 0.5).astype(np.int64)
  tiles[0, :3] = 0  # text before the first image
  bias, _ = modeling_mllama._prepare_cross_attention_mask(torch.tensor(tiles), 5, torch.float32)
  got = tile_cross_attention_mask(jnp.asarray(tiles), 5)  # [2, 1, 9, 40]
  np.testing.assert_array_equal(got, bias.numpy() == 0)


@pytest.mark.parametrize("mask_kind", ["spec", "dense", "dense_per_head"])
def test_xla_matches_numpy(mask_kind):
  q, k, v = _qkv(2, T, S, 4, 2, 32)
  if mask_kind == "spec":
    mask = CrossMaskSpec(*_groups())
    allowed = _rule_np(*_groups())
    np.testing.assert_array_equal(mask.dense(T, S), allowed)
  else:  # a per-token mask as a processor gives it, rows that see nothing unmasked
    heads = 4 if mask_kind == "dense_per_head" else 1
    allowed = np.random.default_rng(1).random((2, heads, T, S)) < 0.3
    allowed[0, :, :20] = False
    mask = allowed = unmask_empty_rows(jnp.asarray(allowed))
  got = dot_product_attention(q, k, v, mask, scale=32**-0.5, backend="xla")
  diff = max_diff(got, _attention_np(q, k, v, allowed, 32**-0.5))
  record(f"nn/cross_attention_xla_{mask_kind}", diff)
  assert diff <= TOLERANCE


def _sin_loss(backend, spec, scale):
  def loss(q, k, v):
    out = dot_product_attention(q, k, v, spec, scale=scale, backend=backend)
    return jnp.sum(jnp.sin(out)), out
  return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))


def test_splash_matches_xla_values_and_gradients():
  """Several groups per row, queries that see nothing (or a group without keys), padding keys,
  T and S padded to 128 inside: every query row compares, gradients too."""
  q, k, v = _qkv(2, T, S, 4, 2, 32)
  spec = CrossMaskSpec(*_groups())
  (_, want), want_grads = _sin_loss("xla", spec, 32**-0.5)(q, k, v)
  (_, got), got_grads = _sin_loss("splash_interpret", spec, 32**-0.5)(q, k, v)
  diff = max_diff(got, want)
  grad_diff = max(max_diff(g, w) for g, w in zip(got_grads, want_grads))
  record("nn/cross_attention_splash", diff)
  record("nn/cross_attention_splash_grads", grad_diff)
  assert all(np.isfinite(g).all() for g in got_grads)
  assert diff <= TOLERANCE and grad_diff <= TOLERANCE


def test_splash_one_query_every_query_sees_an_image():
  """A decode step's single query over 256 keys (a lane multiple: no key padding), every query
  seeing an image: the kernel's every-key call is skipped."""
  q, k, v = _qkv(2, 1, 256, 2, 2, 32, seed=4)
  k_group = np.zeros((2, 256), np.int32)
  k_group[0, 100:] = 1
  k_group[1, 200:] = -1
  spec = CrossMaskSpec(jnp.asarray([[1], [0]]), jnp.asarray(k_group))
  run = lambda backend: jax.jit(lambda q, k, v: dot_product_attention(
      q, k, v, spec, scale=32**-0.5, backend=backend))(q, k, v)
  diff = max_diff(run("splash_interpret"), run("xla"))
  record("nn/cross_attention_splash_decode_step", diff)
  assert diff <= TOLERANCE


def test_splash_under_mesh():
  """8 devices: batch over data x fsdp (4), heads over tensor (2); two shards hold a query that
  sees no image, two do not."""
  q, k, v = _qkv(4, T, S, 4, 2, 32, seed=5)
  spec = CrossMaskSpec(*_groups(4))
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 4, 2), shd.MESH_AXES)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(shd.FSDP_TP_RULES)):
    run = jax.jit(lambda q, k, v: dot_product_attention(
        q, k, v, spec, scale=32**-0.5, backend="splash_interpret"))
    assert "P(('data', 'fsdp'), 'tensor', None, None)" in str(jax.make_jaxpr(run)(q, k, v))
    got = run(q, k, v)
  diff = max_diff(got, dot_product_attention(q, k, v, spec, scale=32**-0.5, backend="xla"))
  record("nn/cross_attention_splash_mesh", diff)
  assert diff <= TOLERANCE


def _mllama_layer():
  cfg = MllamaTextConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         rms_norm_eps=1e-5, vocab_size=32, intermediate_size=96,
                         num_hidden_layers=1, cross_attention_layers=[0])
  cfg._attn_implementation = "eager"
  torch.manual_seed(0)
  layer = add_noise(modeling_mllama.MllamaTextCrossAttention(cfg, layer_idx=0).eval(), scale=0.3)
  w = {name: p.detach().numpy() for name, p in layer.named_parameters()}
  n, kv, h, d = 4, 2, 16, 64
  params = {
      "q": {"kernel": w["q_proj.weight"].reshape(n, h, d)},
      "k": {"kernel": w["k_proj.weight"].reshape(kv, h, d)},
      "v": {"kernel": w["v_proj.weight"].reshape(kv, h, d)},
      "o": {"kernel": w["o_proj.weight"].reshape(d, n, h)},
      "q_norm": {"scale": w["q_norm.weight"]}, "k_norm": {"scale": w["k_norm.weight"]},
  }
  module = CrossAttention(n, kv, h, TEXT_AXES, qk_norm=True, norm_eps=1e-5)
  return layer, {"params": jax.tree.map(jnp.asarray, params)}, module


def test_layer_matches_mllama():
  """Two images of up to 3 tiles x 5 tokens; text before the first image sees nothing (and
  attends every state, padding tiles included, as in transformers), right padding too. The
  processor's per-tile mask (dense) and its image groups (spec) give transformers' output."""
  tiles = np.zeros((2, 12, 2, 3), np.int64)  # [B, T, images, tiles]
  tiles[0, 2:7, 0, :2] = 1  # image 0 has 2 tiles
  tiles[0, 7:, 1, :3] = 1  # image 1 has 3
  tiles[1, 4:10, 0, :1] = 1  # one image of 1 tile; tokens 10, 11 are padding
  r = np.random.default_rng(6)
  x, states = r.normal(size=(2, 12, 64)), r.normal(size=(2, 30, 64))
  layer, params, module = _mllama_layer()
  bias, _ = modeling_mllama._prepare_cross_attention_mask(torch.tensor(tiles), 5, torch.float32)
  with torch.no_grad():
    want = layer(torch.tensor(x, dtype=torch.float32),
                 cross_attention_states=torch.tensor(states, dtype=torch.float32),
                 attention_mask=bias)[0].numpy()
  seen = tiles.any(axis=3)  # [B, T, images]
  spec = CrossMaskSpec(jnp.asarray(np.where(seen.any(-1), seen.argmax(-1), -1)),
                       jnp.asarray(np.where(tiles.max(1), np.arange(2)[:, None], -1)
                                   .repeat(5, axis=-1).reshape(2, 30)))
  x, states = jnp.asarray(x, jnp.float32), jnp.asarray(states, jnp.float32)
  for name, mask in (("dense", tile_cross_attention_mask(jnp.asarray(tiles), 5)), ("spec", spec)):
    got = module.apply(params, x, mask, states=states)
    diff = max_diff(got, want)
    record(f"nn/cross_attention_mllama_{name}", diff)
    assert diff <= TOLERANCE, name
  kv = module.apply(params, states, method=module.keys_values)
  assert kv["k"].shape == kv["v"].shape == (2, 30, 2, 16)
  np.testing.assert_array_equal(module.apply(params, x, spec, kv=kv),
                                module.apply(params, x, spec, states=states))


def test_layer_biases_and_state_width():
  """States narrower than the text (D_kv 24, D 16), q/kv/o biases, GQA: against numpy."""
  module = CrossAttention(4, 2, 8, TEXT_AXES, q_bias=True, kv_bias=True, o_bias=True)
  r = np.random.default_rng(7)
  x, states = jnp.asarray(r.normal(size=(2, 5, 16)), jnp.float32), \
      jnp.asarray(r.normal(size=(2, 7, 24)), jnp.float32)
  shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, None,
                                                       states=states)))
  params = jax.tree.map(lambda p: jnp.asarray(0.3 * r.normal(size=p.shape), jnp.float32), shapes)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  q = np.einsum("btd,nhd->btnh", x, p["q"]["kernel"]) + p["q"]["bias"]
  k = np.einsum("bsd,nhd->bsnh", states, p["k"]["kernel"]) + p["k"]["bias"]
  v = np.einsum("bsd,nhd->bsnh", states, p["v"]["kernel"]) + p["v"]["bias"]
  out = _attention_np(q, k, v, np.ones((1, 1, 5, 7), bool), 8**-0.5)
  want = np.einsum("btnh,dnh->btd", out, p["o"]["kernel"]) + p["o"]["bias"]
  diff = max_diff(module.apply(params, x, None, states=states), want)
  record("nn/cross_attention_layer_biases", diff)
  assert diff <= TOLERANCE
  with pytest.raises(ValueError, match="exactly one of"):
    module.apply(params, x, None)

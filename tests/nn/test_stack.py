"""`first_layers`: a vision tower asked for its first k layers runs only those, on the whole
stack's parameters, and neither computes nor differentiates the rest."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders.vit import VisionConfig, VisionTransformer
from mmjax.nn.stack import unrolled_layers

CONFIG = VisionConfig(kind="clip", image_size=16, patch_size=4, hidden_size=16,
                      intermediate_size=32, num_layers=4, num_heads=2)


def _setup():
  model = VisionTransformer(CONFIG)
  pixels = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
  params = model.init(jax.random.key(0), pixels)["params"]
  return model, params, pixels


def _poison_layers_from(params, first: int):
  """NaN in every parameter of layers `first..L-1` (a computed layer would spread it)."""
  def poison(path, leaf):
    in_layers = any(getattr(key, "key", None) == "layers" for key in path)
    return leaf.at[first:].set(jnp.nan) if in_layers else leaf
  return jax.tree_util.tree_map_with_path(poison, params)


@pytest.mark.parametrize("unrolled", [False, True])
@pytest.mark.parametrize("count", [0, 1, 3])
def test_first_layers_equal_the_full_runs_hidden_states(count, unrolled):
  model, params, pixels = _setup()
  full = model.apply({"params": params}, pixels)["hidden_states"]  # [L+1, B, N, D]
  poisoned = _poison_layers_from(params, count)

  def loss(p):
    hidden = model.apply({"params": p}, pixels, num_layers=count)["hidden_states"]
    return jnp.sum(jnp.sin(hidden[-1])), hidden

  with unrolled_layers() if unrolled else contextlib.nullcontext():
    (_, hidden), grads = jax.value_and_grad(loss, has_aux=True)(poisoned)
  assert hidden.shape[0] == count + 1
  np.testing.assert_allclose(hidden, full[:count + 1], rtol=1e-6, atol=1e-6)
  # The layers past `count` were never run: their NaNs reach no output and no gradient, and
  # their own gradients are zeros.
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)), path
    if any(getattr(key, "key", None) == "layers" for key in path):
      assert np.all(np.asarray(grad[count:]) == 0), path


def test_the_whole_stack_still_gives_every_output():
  model, params, pixels = _setup()
  out = model.apply({"params": params}, pixels, num_layers=CONFIG.num_layers)
  assert out["hidden_states"].shape[0] == CONFIG.num_layers + 1
  assert set(out) == {"hidden_states", "last_hidden_state", "pooled"}


@pytest.mark.parametrize("count", [-1, 5])
def test_a_layer_count_out_of_range_is_refused(count):
  model, params, pixels = _setup()
  with pytest.raises(ValueError, match="num_layers"):
    model.apply({"params": params}, pixels, num_layers=count)


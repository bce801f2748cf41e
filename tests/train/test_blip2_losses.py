"""BLIP-2 stage-1 losses (`mmjax.train.blip2_losses`) on hand-checkable inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mmjax.train import blip2_losses as bl


def test_cross_entropy_is_torchs_with_label_smoothing():
  logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
  targets = np.array([0, 3, 1, 1, 2])
  for smoothing in (0.0, 0.1):
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets),
                                            label_smoothing=smoothing).item()
    assert float(bl.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), smoothing)) == \
        pytest.approx(ref, abs=1e-6)
  weights = jnp.array([1, 0, 1, 0, 0])  # the mean over the weighted entries only
  ref = torch.nn.functional.cross_entropy(torch.tensor(logits[[0, 2]]),
                                          torch.tensor(targets[[0, 2]])).item()
  assert float(bl.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 0.0, weights)) == \
      pytest.approx(ref, abs=1e-6)


def test_itc_scores_take_the_best_query_over_the_temperature():
  image = jnp.array([[[1.0, 0.0], [0.0, 1.0]],    # image 0: queries along x and y
                     [[-1.0, 0.0], [0.0, -1.0]]])  # image 1: along -x and -y
  text = jnp.array([[1.0, 0.0], [-0.6, -0.8]])
  scores = bl.itc_scores(image, text, jnp.float32(0.5))
  np.testing.assert_allclose(scores, [[2.0, -1.2], [0.0, 1.6]], atol=1e-6)
  # Perfect separation at a low temperature: only the smoothing's share is left.
  loss = float(bl.itc_loss(jnp.eye(3) * 1000.0))
  assert loss == pytest.approx(0.1 * (1000.0 * 2 / 3), rel=1e-4)  # eps * mean_c(-log p_c)


def test_temperature_is_clamped_with_a_straight_through_gradient():
  assert float(bl.clamp_temperature(jnp.float32(0.9))) == pytest.approx(0.5)
  assert float(bl.clamp_temperature(jnp.float32(1e-5))) == pytest.approx(0.001)
  assert float(bl.clamp_temperature(jnp.float32(0.07))) == pytest.approx(0.07)
  assert float(jax.grad(lambda t: 3.0 * bl.clamp_temperature(t))(jnp.float32(0.9))) == 3.0


def test_hard_negatives_never_pick_the_pair_and_follow_the_scores():
  b = 4
  scores = jnp.zeros((b, b)).at[jnp.arange(b), (jnp.arange(b) + 1) % b].set(50.0)
  images, texts = bl.hard_negatives(jax.random.key(0), scores)
  # image i's hardest caption is i+1; caption j's hardest image is j-1 (the transpose).
  np.testing.assert_array_equal(texts, (np.arange(b) + 1) % b)
  np.testing.assert_array_equal(images, (np.arange(b) - 1) % b)
  flat = jnp.zeros((b, b))  # uniform: any other pair, never the pair itself
  for seed in range(20):
    images, texts = bl.hard_negatives(jax.random.key(seed), flat)
    assert (np.asarray(images) != np.arange(b)).all() and (np.asarray(texts) != np.arange(b)).all()


def test_itm_rows_and_loss():
  states = jnp.arange(3)[:, None, None] * jnp.ones((3, 2, 1))
  ids = jnp.array([[10, 11], [20, 21], [30, 31]])
  mask = jnp.array([[1, 1], [1, 0], [1, 1]])
  s, i, m = bl.itm_rows(states, ids, mask, jnp.array([2, 0, 1]), jnp.array([1, 2, 0]))
  np.testing.assert_array_equal(s[:, 0, 0], [0, 1, 2, 2, 0, 1, 0, 1, 2])
  np.testing.assert_array_equal(i[:, 0], [10, 20, 30, 10, 20, 30, 20, 30, 10])
  np.testing.assert_array_equal(m[:, 1], [1, 0, 1, 1, 0, 1, 0, 1, 1])
  logits = jnp.array([[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 6)
  assert float(bl.itm_loss(logits)) == pytest.approx(math.log(1 + math.e ** -1), abs=1e-6)


def test_itg_replaces_the_bos_and_predicts_the_next_real_token():
  ids = jnp.array([[2, 5, 6, 0], [2, 7, 0, 0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(bl.decoder_ids(ids, 9), [[9, 5, 6, 0], [9, 7, 0, 0]])
  logits = jnp.full((2, 4, 10), -100.0)
  right = logits.at[0, 0, 5].set(100.0).at[0, 1, 6].set(100.0).at[1, 0, 7].set(100.0)
  # Only the three predicted real tokens count: perfect there -> only smoothing remains.
  smooth = 0.1 * 200.0 * 9 / 10  # eps * mean over classes of -log p (p ~ e^-200 on 9 of 10)
  assert float(bl.itg_loss(right, ids, mask)) == pytest.approx(smooth, rel=1e-4)
  wrong = right.at[1, 0, 7].set(-100.0).at[1, 0, 3].set(100.0)
  assert float(bl.itg_loss(wrong, ids, mask)) == pytest.approx(
      smooth + 0.9 * 200.0 / 3, rel=1e-4)

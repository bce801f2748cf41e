"""CLIP's and SigLIP's losses against direct torch computations of the papers' formulas."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmjax.train import contrastive as con


def _embeds(seed, rows=6, dim=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, rows, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_clip_loss_is_the_mean_of_both_directions_cross_entropies(seed):
  images, texts = _embeds(seed)
  scale = math.log(1 / 0.07)
  logits = con.pair_logits(jnp.asarray(images), jnp.asarray(texts), jnp.float32(scale),
                           jnp.float32(0.0), capped=True)
  ours = float(con.clip_loss(logits))
  ref_logits = torch.tensor(images) @ torch.tensor(texts).T * math.exp(scale)
  labels = torch.arange(len(images))
  ref = float((F.cross_entropy(ref_logits, labels) + F.cross_entropy(ref_logits.T, labels)) / 2)
  assert abs(ours - ref) < 1e-5, (ours, ref)


def test_clip_scale_is_capped_at_100():
  images, texts = _embeds(2)
  big = con.pair_logits(jnp.asarray(images), jnp.asarray(texts), jnp.float32(9.0),
                        jnp.float32(0.0), capped=True)
  np.testing.assert_allclose(np.asarray(big), 100 * images @ texts.T, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 3])
def test_siglip_loss_is_the_pairwise_sigmoid_loss(seed):
  images, texts = _embeds(seed)
  scale, bias = math.log(10.0), -10.0
  logits = con.pair_logits(jnp.asarray(images), jnp.asarray(texts), jnp.float32(scale),
                           jnp.float32(bias), capped=False)
  ours = float(con.siglip_loss(logits))
  ref_logits = torch.tensor(images) @ torch.tensor(texts).T * math.exp(scale) + bias
  labels = 2 * torch.eye(len(images)) - 1
  ref = float(-F.logsigmoid(labels * ref_logits).sum() / len(images))
  assert abs(ours - ref) < 1e-5, (ours, ref)


def test_in_batch_retrieval_accuracy():
  logits = jnp.asarray([[3.0, 1.0, 0.0], [0.0, 1.5, 2.0], [0.0, 0.5, 4.0]])
  acc = con.retrieval_accuracy(logits)
  assert float(acc["accuracy/image_to_text"]) == pytest.approx(2 / 3)  # row 1 picks caption 2
  assert float(acc["accuracy/text_to_image"]) == pytest.approx(1.0)  # every column's max: its row


def test_objectives_from_the_train_section():
  assert con.ContrastiveConfig.from_train({"objective": "siglip"}).objective == "siglip"
  assert con.ContrastiveConfig.from_train({"objective": "dpo"}) is None
  assert con.ContrastiveConfig.from_train({}) is None

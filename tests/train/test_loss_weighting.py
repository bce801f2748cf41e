"""`train.loss_weighting`: token / sample / square (InternVL) averaging per packed sample, against
a direct numpy computation, on the dense and the target-only loss, with gradient accumulation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.decoders.config import DecoderConfig
from mmjax.models.standalone import CausalLM
from mmjax.train.loss import loss_weights
from mmjax.train.state import TrainState
from mmjax.train.step import make_train_step

CFG = DecoderConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
POWER = {"token": 0.0, "sample": 1.0, "square": 0.5}


def _packed_batch(seed=0):
  """4 rows of 16: packed samples of different target counts, padding, a sample without
  targets, a row without any."""
  rng = np.random.default_rng(seed)
  b, t = 4, 16
  segments = np.zeros((b, t), np.int32)
  segments[0, :5], segments[0, 5:14] = 1, 2  # two samples, then padding
  segments[1, :] = 1  # one sample filling the row
  segments[2, :3], segments[2, 3:9], segments[2, 9:16] = 1, 2, 3
  segments[3, :6] = 1  # no targets at all
  mask = np.zeros((b, t), np.float32)
  mask[0, [3, 4]] = 1  # sample of 2 targets
  mask[0, 8:14] = 1  # sample of 6
  mask[1, 4:15] = 1  # 11
  mask[2, 2] = 1  # 1
  # row 2 sample 2: none
  mask[2, 11:16] = 1  # 5
  positions = np.zeros((b, t), np.int32)
  for r in range(b):
    for s in np.unique(segments[r]):
      where = np.flatnonzero(segments[r] == s)
      positions[r, where] = np.arange(len(where))
  return {"input_ids": rng.integers(1, CFG.vocab_size, (b, t)).astype(np.int32),
          "labels": rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32),
          "loss_mask": mask, "attention_mask": (segments > 0).astype(np.int32),
          "segment_ids": segments, "positions": positions}


def _numpy_weights(mask, segments, power):
  weights = np.zeros_like(mask)
  for r in range(mask.shape[0]):
    for s in np.unique(segments[r]):
      where = segments[r] == s
      n = mask[r, where].sum()
      if n:
        weights[r, where] = mask[r, where] / n**power
  return weights


def _numpy_loss(logits, batch, power):
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  target = np.take_along_axis(logits, batch["labels"][..., None], -1)[..., 0]
  weights = _numpy_weights(batch["loss_mask"], batch["segment_ids"], power)
  return ((log_z - target) * weights).sum() / weights.sum()


@pytest.mark.parametrize("weighting", sorted(POWER))
def test_weights_per_packed_sample(weighting):
  batch = _packed_batch()
  got = loss_weights(jnp.asarray(batch["loss_mask"]), jnp.asarray(batch["segment_ids"]),
                     weighting)
  want = _numpy_weights(batch["loss_mask"], batch["segment_ids"], POWER[weighting])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  if weighting == "square":  # a sample of n targets weighs sqrt(n) in all
    assert float(got[1].sum()) == pytest.approx(np.sqrt(11), rel=1e-6)


def test_unknown_weighting_is_named():
  with pytest.raises(ValueError, match="loss_weighting.*'mean'"):
    make_train_step(CausalLM(CFG), optax.sgd(1.0), lambda s: 1.0, loss_weighting="mean")


@functools.cache
def _model():
  """The module, its parameters and numpy's loss for each weighting (jitted: ~5x faster than
  eager on the CI's CPUs)."""
  batch = {k: jnp.asarray(v) for k, v in _packed_batch().items()}
  module = CausalLM(CFG)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), batch["input_ids"], batch["positions"])
  logits = jax.jit(module.apply)(params, batch["input_ids"], batch["positions"],
                                 batch["attention_mask"], batch["segment_ids"]).logits
  return module, params["params"], {w: _numpy_loss(logits, _packed_batch(), p)
                                    for w, p in POWER.items()}


def _step_result(weighting, loss_chunk, grad_accum):
  batch = {k: jnp.asarray(v) for k, v in _packed_batch().items()}
  module, params, want = _model()
  tx = optax.sgd(1.0)  # the update is minus the gradient
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen={},
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(1),
                     skipped=jnp.zeros((), jnp.int32))
  step = jax.jit(make_train_step(module, tx, lambda s: 1.0, grad_accum=grad_accum,
                                 loss_chunk=loss_chunk, loss_weighting=weighting))
  new, metrics = step(state, batch)
  return metrics, new.params, want[weighting]


def test_sample_weighting_step_equals_numpy():
  """The target-only loss over two microbatches (rows split across them) gives numpy's mean of
  the samples' mean losses. (`token`, the default, is what every other train test runs.)"""
  metrics, _, want = _step_result("sample", loss_chunk=4, grad_accum=2)
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=2e-6)
  assert float(metrics["target_tokens"]) == 25  # counted unweighted


def test_square_weighting_dense_and_accumulated_steps_equal_numpy():
  """Square weighting: the dense loss in one microbatch and the target-only loss accumulated
  over two both give numpy's loss, and the same update."""
  dense, dense_params, want = _step_result("square", loss_chunk=0, grad_accum=1)
  chunked, chunked_params, _ = _step_result("square", loss_chunk=4, grad_accum=2)
  for metrics in (dense, chunked):
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=2e-6)
  for got, ref in zip(jax.tree.leaves(chunked_params), jax.tree.leaves(dense_params)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)

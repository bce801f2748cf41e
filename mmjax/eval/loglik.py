"""Log-likelihood of continuations (multiple-choice options) after left-padded prompts.

Runs through a `Generator`'s traced prefill and step (the family's generation adapter, on the
parameters in the layout the generator holds them), so it works for every family that generates: the prompt is prefilled into a KV cache whose last logits score
the first continuation token, then each continuation token is fed in turn (teacher forcing) and
scores the next. Continuations are right padded; a padded token comes after every real one of its
row, so it changes no score that counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn.masks import positions_from_attention_mask


class ContinuationScorer:
  """`scorer(input_ids [B, T], mask [B, T], pixels, cont [B, K], cont_mask [B, K])` -> the summed
  log-probabilities `[B]` float32 of each row's continuation tokens."""

  def __init__(self, generator):
    self.generator = generator
    self._score = jax.jit(self._score_fn)

  def _score_fn(self, params, input_ids, mask, positions, pixels, cont, cont_mask):
    b, t = input_ids.shape
    k = cont.shape[1]
    if positions is None:
      positions = positions_from_attention_mask(mask)  # [B, T]
    full_mask = jnp.concatenate([mask, jnp.ones((b, k - 1), mask.dtype)], axis=1)  # [B, T+K-1]
    gen = self.generator
    logits, state = gen.prefill_traced(params, input_ids, pixels, positions, full_mask,
                                       gen.init_state(b, t + k - 1))
    last = positions[..., -1]  # [B] or [3, B]

    def feed(state, j):
      logits, state = gen.step_traced(params, jax.lax.dynamic_slice_in_dim(cont, j, 1, axis=1),
                                      (last + 1 + j)[..., None], full_mask, state, t + j)
      return state, logits

    if k > 1:
      _, later = jax.lax.scan(feed, state, jnp.arange(k - 1))  # [K-1, B, V]
      logits = jnp.concatenate([logits[None], later], axis=0)  # [K, B, V]
    else:
      logits = logits[None]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, cont.T[..., None], axis=-1)[..., 0]  # [K, B]
    return jnp.sum(picked.T * cont_mask, axis=1)  # [B]

  def __call__(self, input_ids, mask, pixels, cont, cont_mask) -> np.ndarray:
    input_ids = np.asarray(input_ids, np.int32)
    mask = np.asarray(mask, np.int32)
    cont = np.asarray(cont, np.int32)
    cont_mask = np.asarray(cont_mask, np.float32)
    if cont.shape[0] != input_ids.shape[0] or cont.shape != cont_mask.shape:
      raise ValueError(f"continuations {cont.shape} / mask {cont_mask.shape} do not match "
                       f"{input_ids.shape[0]} prompt rows")
    pixels, positions = self.generator.model.prepare_inputs(input_ids, mask, pixels, None)
    return np.asarray(self._score(self.generator.params, input_ids, mask, positions, pixels, cont,
                                  cont_mask))

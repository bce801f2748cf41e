"""Per-token log-probabilities of the targets, for losses that are not a plain sum over tokens.

Preference losses (`mmjax.train.preference`) need each answer's summed log-probability before
they can weigh anything, so the target-only trick of `mmjax.train.loss.target_cross_entropy`
(each chunk's gradient taken at once, scaled by a constant later) does not apply: the cotangent
of a token's log-probability is only known once the whole batch's are. `target_logprobs` runs the
LM head on target positions only, `chunk` per row at a time, in its forward pass and again in its
backward pass with the cotangents at hand (one more head matmul per chunk than the cross-entropy,
and still no `[T, V]` logits in memory).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def token_logprobs(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """`log p(labels[t])` where `mask > 0`, else 0: `[B, T]` float32.

  `logits [B, T, V]` (logits[:, t] predicts labels[:, t]), `labels`, `mask [B, T]`.
  """
  logits = logits.astype(jnp.float32)
  target = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.where(mask > 0, target - jax.nn.logsumexp(logits, axis=-1), 0.0)


def target_logprobs(
    head_params,
    hidden: jax.Array,
    logits_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    mask: jax.Array,
    chunk: int,
) -> jax.Array:
  """`token_logprobs` of the logits `logits_fn` gives at target positions alone, `chunk` of
  them per row at a time; differentiable in `head_params` and `hidden`.

  `hidden [B, T, D]`; `logits_fn(head_params, hidden, rows [B, C]) -> [B, C, V]` (see
  `mmjax.train.loss.target_cross_entropy`); `labels`, `mask [B, T]`. Returns `[B, T]` float32.
  """
  b, t = labels.shape
  chunk = max(1, min(chunk, t))
  n = -(-t // chunk)
  in_row = np.arange(n * chunk) < t  # [n*C] (a constant: nothing traced is closed over)

  def target_order(mask):
    """`[B, n*C]` positions, each row's targets first; pad slots repeat position 0."""
    order = jnp.argsort(~(mask > 0), axis=1, stable=True).astype(jnp.int32)
    return jnp.pad(order, ((0, 0), (0, n * chunk - t)))

  def chunk_slots(order, labels, mask, i):
    """Chunk `i`'s positions `[B, C]`, their labels and whether each slot is a target."""
    rows = jax.lax.dynamic_slice_in_dim(order, i * chunk, chunk, axis=1)
    ok = jax.lax.dynamic_slice_in_dim(jnp.asarray(in_row), i * chunk, chunk)
    take = lambda x: jnp.take_along_axis(x, rows, axis=1)
    return rows, take(labels), (take(mask) > 0) & ok

  # The backward pass calls `logits_fn` again, outside the forward pass's trace: what it closes
  # over (the decoder's masks, positions, ...) must be explicit arguments, and those that are
  # differentiable get their cotangents (the decoder passes the ones that train through `p`).
  # (`jax.closure_convert` would hoist only the floating-point values.)
  fn, consts = _hoisted(logits_fn, head_params, hidden, jnp.zeros((b, chunk), jnp.int32))
  inexact = [jnp.issubdtype(c.dtype, jnp.inexact) for c in consts]
  floats = [c for c, f in zip(consts, inexact) if f]
  others = [c for c, f in zip(consts, inexact) if not f]

  def chunk_logprobs(p, h, floats, others, slots):  # [B, C]
    rows, chunk_labels, is_target = slots
    floats, others = iter(floats), iter(others)
    closed = [next(floats) if f else next(others) for f in inexact]
    return token_logprobs(fn(closed, p, h, rows), chunk_labels, is_target)

  def chunks_of(mask):  # chunks that hold a target
    return -(-jnp.max(jnp.sum(mask > 0, axis=1)) // chunk)

  @jax.custom_vjp
  def logprobs(p, h, floats, others, labels, mask):
    order = target_order(mask)

    def body(i, out):
      slots = chunk_slots(order, labels, mask, i)
      # Non-target and pad slots add 0 (pad slots all point at position 0).
      return out.at[jnp.arange(b)[:, None], slots[0]].add(
          chunk_logprobs(p, h, floats, others, slots))

    return jax.lax.fori_loop(0, chunks_of(mask), body, jnp.zeros((b, t), jnp.float32))

  def forward(*args):
    return logprobs(*args), args

  def backward(saved, g):  # g [B, T]: each token's cotangent
    p, h, floats, others, labels, mask = saved
    order = target_order(mask)

    def body(i, grads):
      slots = chunk_slots(order, labels, mask, i)
      _, vjp = jax.vjp(lambda *a: chunk_logprobs(*a, others, slots), p, h, floats)
      chunk_grads = vjp(jnp.take_along_axis(g, slots[0], axis=1))
      return jax.tree.map(lambda a, d: a + d.astype(a.dtype), grads, chunk_grads)

    zeros = jax.tree.map(jnp.zeros_like, (p, h, floats))
    d_params, d_hidden, d_floats = jax.lax.fori_loop(0, chunks_of(mask), body, zeros)
    return d_params, d_hidden, d_floats, None, None, None

  logprobs.defvjp(forward, backward)
  return logprobs(head_params, hidden, floats, others, labels, mask)


def _hoisted(fn: Callable, *example) -> tuple[Callable, list]:
  """`(run, consts)`: `run(consts, *args) == fn(*args)` for arguments shaped as `example`, with
  every value `fn` closes over (concrete or traced) in `consts`."""
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example)
  out_tree = jax.tree.structure(out_shape)

  def run(consts, *args):
    out = jax.core.eval_jaxpr(closed.jaxpr, consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(out_tree, out)

  return run, list(closed.consts)

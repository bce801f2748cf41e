"""Next-token cross-entropy, computed only where there are targets.

In SFT rows most positions (image tokens, prompts, padding) carry no target, yet a dense loss pays
for their `[T, V]` logits three times (head forward, its two backward matmuls) and keeps them as
residuals. `target_cross_entropy` sorts each row's target positions to the front, cuts the sorted
positions into chunks of `chunk`, and runs the final norm + LM head only on chunks that hold a
target (`lax.cond`: empty chunks cost nothing). Each chunk is rematerialised, so the residuals are
the hidden states alone and the logits of one chunk at a time are ever in memory (the chunked
loss of large-vocabulary trainers, e.g. Liger's fused linear cross-entropy, with JAX's
`checkpoint`). The sum is the dense loss's, added in another order (float32 rounding).
"""

from typing import Callable

import jax
import jax.numpy as jnp

# Target positions per row per LM-head call (`train.loss_chunk`; 0: dense logits everywhere).
DEFAULT_CHUNK = 128


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                  z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Summed float32 loss over masked targets and the number of targets.

  `logits [B, T, V]`, `labels [B, T]` (logits[:, t] predicts labels[:, t]), `mask [B, T]`.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  loss = log_z - target
  if z_loss:
    loss = loss + z_loss * jnp.square(log_z)
  mask = mask.astype(jnp.float32)
  return jnp.sum(loss * mask), jnp.sum(mask)


def target_cross_entropy(
    hidden: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
    labels: jax.Array,
    mask: jax.Array,
    chunk: int,
    z_loss: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """`cross_entropy(logits_fn(hidden), labels, mask)` without the logits of non-target positions.

  `hidden [B, T, D]`, `logits_fn: [B, C, D] -> [B, C, V]` (closes over the head's parameters),
  `labels`, `mask [B, T]`, `chunk` positions per row per head call.
  """
  b, t, _ = hidden.shape
  chunk = max(1, min(chunk, t))
  n = -(-t // chunk)
  is_target = mask > 0
  # [B, n*C] positions, each row's targets first (stable: in order); pad slots repeat position 0
  # and are masked out below.
  order = jnp.argsort(~is_target, axis=1, stable=True).astype(jnp.int32)
  order = jnp.pad(order, ((0, 0), (0, n * chunk - t)))
  valid = jnp.arange(n * chunk) < t  # [n*C]
  slots = order.reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, C]
  slot_valid = valid.reshape(n, 1, chunk)

  @jax.checkpoint
  def chunk_loss(hidden, positions, slot_mask):
    take = lambda x: jnp.take_along_axis(x, positions, axis=1)  # [B, C]
    h = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [B, C, D]
    return cross_entropy(logits_fn(h), take(labels), slot_mask, z_loss)[0]

  def body(total, xs):
    positions, ok = xs
    slot_mask = jnp.take_along_axis(mask, positions, axis=1).astype(jnp.float32) * ok
    loss = jax.lax.cond(jnp.any(slot_mask > 0), chunk_loss,
                        lambda *_: jnp.zeros((), jnp.float32), hidden, positions, slot_mask)
    return total + loss, None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (slots, slot_valid))
  return total, jnp.sum(mask.astype(jnp.float32))

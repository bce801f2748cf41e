"""Next-token cross-entropy, computed only where there are targets.

In SFT rows most positions (image tokens, prompts, padding) carry no target, yet a dense loss pays
for their `[T, V]` logits three times (head forward, its two backward matmuls) and keeps them as
residuals. `target_cross_entropy` sorts each row's target positions to the front and runs the
final norm + LM head (and the decoder's last layer: `Decoder(head_loss=...)`) on `chunk` of them
per row at a time, only as many chunks as the fullest row needs (a while loop). Each chunk's
gradient is taken right away (`jax.vjp`), so the backward pass only scales the accumulated head
gradient and hidden-state gradient: no chunk is computed twice and the logits of one chunk at a
time are ever in memory (the fused linear cross-entropy of large-vocabulary trainers such as
Liger-Kernel, written here with `jax.custom_vjp`: optax's cross-entropy takes logits, so it
cannot avoid them). The sum is the dense loss's, added in another order (float32 rounding).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

# Target positions per row per LM-head call (`train.loss_chunk`; 0: dense logits everywhere).
DEFAULT_CHUNK = 64

# `train.loss_weighting`: the power of a sample's target count that divides its tokens' losses
# (InternVL's `token`, `sample` and `square` averaging).
WEIGHTING_POWERS = {"token": 0.0, "sample": 1.0, "square": 0.5}


def check_weighting(weighting: str) -> None:
  if weighting not in WEIGHTING_POWERS:
    raise ValueError(f"train.loss_weighting must be one of {sorted(WEIGHTING_POWERS)}, "
                     f"got {weighting!r}")


def loss_weights(loss_mask: jax.Array, segment_ids: jax.Array | None,
                 weighting: str = "token") -> jax.Array:
  """Per-token loss weights `[B, T]` float32: `loss_mask / n^p`, n the target count of the
  token's sample (a segment of its row: packed rows hold several samples), p from
  `WEIGHTING_POWERS`. The train step divides the weighted sum by the weights' sum over the
  global batch, as InternVL normalises (`token`: the mean over targets; `sample`: the mean of
  the samples' mean losses; `square`: each sample weighs sqrt(n)).

  `segment_ids [B, T]` (0 = padding; None: each row is one sample).
  """
  check_weighting(weighting)
  mask = loss_mask.astype(jnp.float32)
  power = WEIGHTING_POWERS[weighting]
  if not power:
    return mask
  if segment_ids is None:
    segment_ids = jnp.ones(mask.shape, jnp.int32)
  t = mask.shape[1]

  def row_counts(m, seg):  # [T], [T] -> each position's sample target count [T]
    return jax.ops.segment_sum(m, seg, num_segments=t + 1)[seg]

  counts = jax.vmap(row_counts)(mask, segment_ids.astype(jnp.int32))  # per row: stays sharded
  return mask * jnp.power(jnp.maximum(counts, 1.0), -power)


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
    head_params,
    hidden: jax.Array,
    logits_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    mask: jax.Array,
    chunk: int,
    z_loss: float = 0.0,
    scale: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """`scale * cross_entropy(logits, labels, mask)` with the logits of target positions alone,
  `chunk` of them per row at a time; differentiable in `head_params` and `hidden` (not `scale`).

  `hidden [B, T, D]`; `logits_fn(head_params, hidden, rows [B, C]) -> [B, C, V]` the logits at
  the rows' positions (the final norm and LM head on those positions, or the decoder's last
  layer as well: `Decoder(head_loss=...)`); `labels`, `mask [B, T]`. Returns the scaled summed
  loss and the number of targets. The train step passes `1 / targets` as `scale` rather than
  dividing the result: the chunks' gradients then start from it (a `[B, C, V]` multiply), and
  the cotangent of the result is the constant 1 that XLA folds, instead of a pass over the
  head's gradient.
  """
  t = hidden.shape[1]
  chunk = max(1, min(chunk, t))
  n = -(-t // chunk)
  is_target = mask > 0
  # [B, n*C] positions, each row's targets first (stable: in order); pad slots repeat position 0
  # and are masked out (their loss, so their gradients, are zero).
  order = jnp.argsort(~is_target, axis=1, stable=True).astype(jnp.int32)
  order = jnp.pad(order, ((0, 0), (0, n * chunk - t)))
  in_row = (jnp.arange(n * chunk) < t).astype(jnp.float32)  # [n*C]
  chunks = -(-jnp.max(jnp.sum(is_target, axis=1)) // chunk)  # chunks that hold a target

  def loss_and_grads(head_params, hidden):
    def chunk_grads(i):
      """Chunk `i`'s scaled loss and its gradients for `head_params` and `hidden`."""
      rows = jax.lax.dynamic_slice_in_dim(order, i * chunk, chunk, axis=1)  # [B, C]
      ok = jax.lax.dynamic_slice_in_dim(in_row, i * chunk, chunk)  # [C]
      take = lambda x: jnp.take_along_axis(x, rows, axis=1)  # [B, C]
      slot_mask = take(mask).astype(jnp.float32) * ok
      chunk_loss = lambda p, h: cross_entropy(logits_fn(p, h, rows), take(labels), slot_mask,
                                              z_loss)[0]
      loss, vjp = jax.vjp(chunk_loss, head_params, hidden)
      dp, dh = vjp(jnp.asarray(scale, jnp.float32))
      return loss * scale, dp, dh

    def body(i, carry):
      total, d_params, d_hidden = carry
      loss, dp, dh = chunk_grads(i)
      return total + loss, jax.tree.map(jnp.add, d_params, dp), d_hidden + dh

    # The first chunk starts the sums (short answers fit in one): no zero head gradient to write
    # and add to. With no target at all it is all masked: zero loss and gradients.
    return jax.lax.fori_loop(1, chunks, body, chunk_grads(0))

  @jax.custom_vjp
  def summed(head_params, hidden):
    return loss_and_grads(head_params, hidden)[0]

  def forward(head_params, hidden):
    total, d_params, d_hidden = loss_and_grads(head_params, hidden)
    return total, (d_params, d_hidden)

  def backward(grads, g):  # the loss is linear in its cotangent: scale the saved gradients
    d_params, d_hidden = grads  # each in its primal's dtype (bf16 activations stay bf16)
    return (jax.tree.map(lambda d: (d * g).astype(d.dtype), d_params),
            (d_hidden * g).astype(d_hidden.dtype))

  summed.defvjp(forward, backward)
  return summed(head_params, hidden), jnp.sum(mask.astype(jnp.float32))

"""Attention masks as boolean arrays (True = may attend), and positions from padding masks."""

import jax
import jax.numpy as jnp


def attention_mask(
    q_index: jax.Array,
    k_index: jax.Array,
    *,
    causal: bool,
    k_valid: jax.Array | None = None,
    q_segment: jax.Array | None = None,
    k_segment: jax.Array | None = None,
    sliding_window: int | None = None,
) -> jax.Array:
  """Builds a `[B, 1, T, S]` mask.

  Args:
    q_index: `[B, T]` or `[T]` index of each query in the (cached) sequence.
    k_index: `[B, S]` or `[S]` index of each key.
    causal: keys after the query are masked.
    k_valid: `[B, S]` False for padding keys.
    q_segment, k_segment: `[B, T]`, `[B, S]` packed-sample ids; attention stays inside a segment.
    sliding_window: a query sees at most this many most recent keys (Mistral).
  """
  q_index = jnp.atleast_2d(q_index)[:, :, None]  # [B|1, T, 1]
  k_index = jnp.atleast_2d(k_index)[:, None, :]  # [B|1, 1, S]
  mask = jnp.ones(jnp.broadcast_shapes(q_index.shape, k_index.shape), dtype=bool)
  if causal:
    mask = mask & (k_index <= q_index)
  if sliding_window is not None:
    mask = mask & (q_index - k_index < sliding_window)
  if k_valid is not None:
    mask = mask & k_valid[:, None, :].astype(bool)
  if q_segment is not None and k_segment is not None:
    mask = mask & (q_segment[:, :, None] == k_segment[:, None, :])
  return mask[:, None]  # [B, 1, T, S]


def positions_from_attention_mask(attention_mask: jax.Array) -> jax.Array:
  """Position ids for left-padded rows, computed as transformers' generate does.

  `cumsum(mask) - 1`, with padding positions set to 1: `[0, 0, 1, 1] -> [1, 1, 0, 1]`.
  """
  mask = attention_mask.astype(jnp.int32)
  positions = jnp.cumsum(mask, axis=-1) - 1
  return jnp.where(mask == 0, 1, positions)

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


def unmask_empty_rows(mask: jax.Array) -> jax.Array:
  """A query that may attend no key attends every key: `mask [..., T, S]` with its all-False rows
  set to True. transformers' Mllama does this to its cross-attention mask (the inverted mask's
  all-masked rows become an all-zero bias), where the einsum path would give such a row the mean
  of the values."""
  return mask | ~jnp.any(mask, axis=-1, keepdims=True)


def tile_cross_attention_mask(mask: jax.Array, tokens_per_tile: int) -> jax.Array:
  """Mllama's processor array `cross_attention_mask [B, T, I, C]` (1 where text token t sees tile
  c of image i) -> the dense boolean `[B, 1, T, I * C * tokens_per_tile]` over the image states
  laid out image-major, tile, then token, with rows that see nothing attending every state."""
  b, t = mask.shape[:2]
  dense = jnp.repeat(mask.astype(bool), tokens_per_tile, axis=3).reshape(b, t, -1)  # [B, T, S]
  return unmask_empty_rows(dense)[:, None]

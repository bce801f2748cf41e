"""A mask described by its structure (causal, window, segments, padding) instead of its values.

Fused kernels (Pallas splash attention on TPU) need to know the mask's *shape of rule*, not a
dense `[B, 1, T, S]` array: a causal or local band plus segment ids. `MaskSpec` carries exactly
that; `dense()` gives the boolean array the einsum (`xla`) backend uses, so both backends read
one description. `CrossMaskSpec` does the same for cross-attention: text queries and image keys
carry image-group ids.
"""

import flax
import jax
import jax.numpy as jnp

from mmjax.nn.masks import attention_mask, unmask_empty_rows


@flax.struct.dataclass
class MaskSpec:
  """Self-attention over one `[B, T]` sequence (no KV cache): queries and keys are the same
  positions.

  `segment_ids [B, T]` (None: one segment) keep attention inside a packed sample; `valid [B, T]`
  (None: all real) marks padding tokens, which no real token attends to.
  """

  segment_ids: jax.Array | None = None
  valid: jax.Array | None = None
  causal: bool = flax.struct.field(pytree_node=False, default=True)
  sliding_window: int | None = flax.struct.field(pytree_node=False, default=None)

  def rows(self, rows: jax.Array, length: int) -> jax.Array:
    """The mask of some queries only, `rows [B, P]` (positions), against every key: a boolean
    `[B, 1, P, T]`."""
    q_segment = None
    if self.segment_ids is not None:
      q_segment = jax.numpy.take_along_axis(self.segment_ids, rows, axis=1)
    return attention_mask(rows, jax.numpy.arange(length)[None], causal=self.causal,
                          k_valid=self.valid, q_segment=q_segment, k_segment=self.segment_ids,
                          sliding_window=self.sliding_window)

  def dense(self, length: int) -> jax.Array:
    """The same mask as a boolean `[B|1, 1, T, T]` (True = may attend)."""
    index = jax.numpy.arange(length)[None]
    return attention_mask(index, index, causal=self.causal, k_valid=self.valid,
                          q_segment=self.segment_ids, k_segment=self.segment_ids,
                          sliding_window=self.sliding_window)


@flax.struct.dataclass
class CrossMaskSpec:
  """Cross-attention of `[B, T]` queries (text) to `[B, S]` keys (image states) by image group.

  Query t may attend key s iff `q_group[b, t] >= 0` and `q_group[b, t] == k_group[b, s]`. Keys
  with a negative group (padding tiles or images) are therefore never attended by a query that
  sees an image. A query that may attend no key (`q_group < 0`: it sees no image; or a group no
  key carries) attends EVERY key of its row, padding keys included: transformers' Mllama turns
  such a row of its inverted mask into an all-zero bias (the layer zeroes the row later, after
  the MLP), and this matches it. No row is fully masked, so none can give NaN.
  """

  q_group: jax.Array  # [B, T] int
  k_group: jax.Array  # [B, S] int

  def sees_keys(self) -> jax.Array:
    """`[B, T]` True where a query has at least one key of its group.

    Sorted search rather than the `[B, T, S]` comparison: O((T + S) log S), so the splash path
    never builds a dense mask.
    """
    keys = jnp.sort(self.k_group, axis=-1)  # [B, S]
    at = jax.vmap(jnp.searchsorted)(keys, self.q_group)  # [B, T]
    found = jnp.take_along_axis(keys, jnp.minimum(at, keys.shape[-1] - 1), axis=-1)
    return (self.q_group >= 0) & (found == self.q_group)

  def dense(self, q_length: int, k_length: int) -> jax.Array:
    """The same mask as a boolean `[B, 1, T, S]` (True = may attend)."""
    if (q_length, k_length) != (self.q_group.shape[1], self.k_group.shape[1]):
      raise ValueError(f"CrossMaskSpec covers {self.q_group.shape[1]} queries x "
                       f"{self.k_group.shape[1]} keys; attention has {q_length} x {k_length}")
    same = self.q_group[:, :, None] == self.k_group[:, None, :]  # [B, T, S]
    mask = same & (self.q_group >= 0)[:, :, None]
    return unmask_empty_rows(mask)[:, None]

"""A mask described by its structure (causal, window, segments, padding) instead of its values.

Fused kernels (Pallas splash attention on TPU) need to know the mask's *shape of rule*, not a
dense `[B, 1, T, S]` array: a causal or local band plus segment ids. `MaskSpec` carries exactly
that; `dense()` gives the boolean array the einsum (`xla`) backend uses, so both backends read
one description.
"""

import flax
import jax

from mmjax.nn.masks import attention_mask


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

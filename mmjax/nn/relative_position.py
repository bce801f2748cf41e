"""T5's relative position bias: a learned scalar per head and per distance bucket, added to the
attention logits (T5 has no position embeddings and no RoPE).

Distances `key - query` fall into `num_buckets` buckets: half of them (per direction when
bidirectional) exact for short distances, the rest logarithmically wider up to `max_distance`,
past which everything shares the last bucket. A causal stack gives every future key bucket 0
(masked anyway).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.linear import DEFAULT_KERNEL_INIT


def relative_position_bucket(relative: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """`relative [..]` int (key position - query position) -> bucket ids in `[0, num_buckets)`,
  as transformers' `T5Attention._relative_position_bucket` computes them (float32 log, then
  truncation)."""
  buckets = jnp.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative > 0).astype(relative.dtype) * num_buckets
    distance = jnp.abs(relative)
  else:
    distance = -jnp.minimum(relative, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # The log of 0 is -inf at distance 0; that branch is never taken there (is_small).
  scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) \
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  large = jnp.minimum(max_exact + scaled.astype(relative.dtype), num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """Bias `[1, N, T, S]` for queries at `q_positions [T]` and keys at `k_positions [S]`;
  the table is `[num_buckets, N]`, as transformers saves `relative_attention_bias.weight`."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    table = self.param(
        "embedding", nn.with_logical_partitioning(DEFAULT_KERNEL_INIT, (None, "heads")),
        (self.num_buckets, self.num_heads), self.param_dtype)
    relative = k_positions[None, :] - q_positions[:, None]  # [T, S]
    buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    bias = jnp.take(table, buckets, axis=0)  # [T, S, N]
    return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)  # [1, N, T, S]

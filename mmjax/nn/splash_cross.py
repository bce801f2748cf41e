"""Cross-attention (T text queries, S image keys) through the Pallas splash kernel.

The kernel masks by equality of segment ids, which is what `CrossMaskSpec` is: a query sees the
keys of its image group. It cannot express "this query sees every key" for some rows only, which
is what a query that sees no image does (transformers' Mllama; see `CrossMaskSpec`). Those rows
come from a second kernel call over the same q, k, v with one segment for every real key, chosen
per query row. The second call doubles the attention cost, forward and backward, and is skipped
(`lax.cond`, per shard) when every query sees an image, as Q-Former-like callers do; Mllama rows
nearly always have one such query (the BOS token before the first image).

Queries and keys are padded to multiples of 128 (the kernel's lanes) with ids that no real query
matches, so real queries never attend them; padded query rows are dropped.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from mmjax.nn.mask_spec import CrossMaskSpec
from mmjax.nn.splash import LANES, heads_first, make_kernel, round_up, run_sharded

# Segment ids besides the image groups (>= 0).
_NO_GROUP = -1  # queries that see no image (their grouped rows are replaced), padding-tile keys
_LANE = -2  # queries and keys added to reach the lane multiple; the every-key call skips these keys


def _local_cross_attention(q, k, v, q_ids, kv_ids, sees, *, interpret):
  """Per-shard body: `q [b, N, Lq, H]`, `k, v [b, K, Lk, H]`, `q_ids, sees [b, Lq]`,
  `kv_ids [b, Lk]` -> `[b, N, Lq, H]`."""
  kernel = make_kernel(mask_lib.FullMask((q.shape[2], k.shape[2])), q.shape[1], interpret)
  run = lambda q_ids, kv_ids: jax.vmap(kernel)(
      q, k, v, segment_ids=kernel_lib.SegmentIds(q=q_ids, kv=kv_ids))
  grouped = run(q_ids, kv_ids)
  every_key = lambda: run(jnp.zeros_like(q_ids), (kv_ids == _LANE).astype(jnp.int32))
  everything = jax.lax.cond(jnp.all(sees), lambda: jnp.zeros_like(grouped), every_key)
  return jnp.where(sees[:, None, :, None], grouped, everything)


def splash_cross_attention(q, k, v, spec: CrossMaskSpec, *, scale: float,
                           interpret: bool = False) -> jax.Array:
  """`q [B, T, N, H]`, `k, v [B, S, K, H]`, `spec` over `[B, T]` x `[B, S]` -> `[B, T, N, H]`."""
  t, s = q.shape[1], k.shape[1]
  if spec.q_group.shape != q.shape[:2] or spec.k_group.shape != k.shape[:2]:
    raise ValueError(f"CrossMaskSpec groups {spec.q_group.shape} x {spec.k_group.shape} do not "
                     f"match {q.shape[:2]} queries x {k.shape[:2]} keys")
  q_length, k_length = round_up(t, LANES), round_up(s, LANES)
  q_group, k_group = spec.q_group.astype(jnp.int32), spec.k_group.astype(jnp.int32)
  q_ids = jnp.pad(jnp.maximum(q_group, _NO_GROUP), ((0, 0), (0, q_length - t)),
                  constant_values=_LANE)  # [B, Lq]
  kv_ids = jnp.pad(jnp.maximum(k_group, _NO_GROUP), ((0, 0), (0, k_length - s)),
                   constant_values=_LANE)  # [B, Lk]
  sees = jnp.pad(spec.sees_keys(), ((0, 0), (0, q_length - t)), constant_values=True)  # [B, Lq]
  q = heads_first(q * jnp.asarray(scale, q.dtype), q_length)  # the kernel does not scale
  k, v = heads_first(k, k_length), heads_first(v, k_length)
  body = functools.partial(_local_cross_attention, interpret=interpret)
  out = run_sharded(body, q, k, v, q_ids, kv_ids, sees)
  return out[:, :, :t].swapaxes(1, 2)  # [B, T, N, H]

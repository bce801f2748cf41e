"""Pallas splash attention (TPU) behind `dot_product_attention(..., backend='splash')`.

The kernel takes a structural mask (causal / local band / full) plus per-token segment ids, so
padding, packing and windows become segment ids and a mask class rather than a dense array.
Sequences are padded to a multiple of 128 (the kernel's lane width); padded and padding tokens
get segment id -1 and only see each other, so real tokens never attend to them and no row is
fully masked.

Inside a mesh (`with mesh:` or `jax.set_mesh`), the kernel runs under `shard_map`: batch split
as the `activation_batch` logical rule says, heads over the `heads` rule's axis when both query
and key/value heads divide it. `backend='splash_interpret'` runs the same kernel through the
Pallas interpreter, which is how CPU tests check it against the einsum reference. Cross-attention
(queries and keys of different lengths) builds on these pieces in `mmjax.nn.splash_cross`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec as P

from mmjax.nn.mask_spec import MaskSpec

LANES = 128
PAD_SEGMENT = -1


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _block(length: int) -> int:
  return next(b for b in (512, 256, 128) if length % b == 0)


def _kernel(heads: int, length: int, causal: bool, window: int | None, interpret: bool):
  shape = (length, length)
  if window is not None:
    one = mask_lib.LocalMask(shape, window_size=(window - 1, 0 if causal else window - 1), offset=0)
  elif causal:
    one = mask_lib.CausalMask(shape)
  else:
    one = mask_lib.FullMask(shape)
  return make_kernel(one, heads, interpret)


def make_kernel(one: mask_lib.Mask, heads: int, interpret: bool):
  """The splash kernel for `heads` query heads, each masked by `one` (`[Lq, Lk]`, both multiples
  of 128)."""
  bq, bkv = _block(one.shape[0]), _block(one.shape[1])
  sizes = kernel_lib.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                                block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                                block_kv_dq=bkv)
  return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([one] * heads), block_sizes=sizes,
                                    head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(q, k, v, segments, *, causal, window, interpret):
  """Per-shard body: `q [b, N, L, H]`, `k, v [b, K, L, H]`, `segments [b, L]` -> `[b, N, L, H]`."""
  kernel = _kernel(q.shape[1], q.shape[2], causal, window, interpret)
  ids = kernel_lib.SegmentIds(q=segments, kv=segments)
  return jax.vmap(kernel)(q, k, v, segment_ids=ids)


def _context_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is not None and not mesh.empty:
    return mesh
  from jax._src import mesh as mesh_lib  # the legacy `with mesh:` context

  physical = mesh_lib.thread_resources.env.physical_mesh
  return None if physical.empty else physical


def _axis_size(mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def _logical_axis(name: str):
  try:
    spec = nn.logical_to_mesh_axes((name,))
  except Exception:  # no rules in context
    return None
  return None if spec is None else spec[0]


def heads_first(x: jax.Array, length: int) -> jax.Array:
  """`[B, T, N, H]` -> `[B, N, L, H]`, zero-padded to `length` (the kernel's lane multiple)."""
  return jnp.pad(x.swapaxes(1, 2), ((0, 0), (0, 0), (0, length - x.shape[1]), (0, 0)))


def run_sharded(body, q, k, v, *per_token):
  """`body(q, k, v, *per_token)` on `q [B, N, Lq, H]`, `k, v [B, K, Lk, H]` and arrays
  `[B, Lq|Lk]` -> `[B, N, Lq, H]`; inside a mesh under `shard_map`: batch split as the
  `activation_batch` rule says, heads over the `heads` rule's axis when both N and K divide it."""
  mesh = _context_mesh()
  if mesh is None:
    return body(q, k, v, *per_token)
  b, n, kv_heads = q.shape[0], q.shape[1], k.shape[1]
  batch_axes = _logical_axis("activation_batch")
  if b % _axis_size(mesh, batch_axes):
    batch_axes = None
  head_axis = _logical_axis("heads")
  if n % _axis_size(mesh, head_axis) or kv_heads % _axis_size(mesh, head_axis):
    head_axis = None
  qkv = P(batch_axes, head_axis, None, None)
  tokens = (P(batch_axes, None),) * len(per_token)
  return jax.shard_map(body, mesh=mesh, in_specs=(qkv, qkv, qkv, *tokens), out_specs=qkv,
                       check_vma=False)(q, k, v, *per_token)


def splash_attention(q, k, v, spec: MaskSpec | None, *, scale: float,
                     interpret: bool = False) -> jax.Array:
  """`q [B, T, N, H]`, `k, v [B, T, K, H]` (self-attention, no cache) -> `[B, T, N, H]`."""
  spec = MaskSpec(causal=False) if spec is None else spec
  b, t = q.shape[:2]
  if k.shape[1] != t:
    raise ValueError(f"splash attention is self-attention over one sequence; got {t} queries and "
                     f"{k.shape[1]} keys (cached decoding uses the xla backend)")
  length = round_up(t, LANES)
  segments = jnp.ones((b, t), jnp.int32) if spec.segment_ids is None else \
      spec.segment_ids.astype(jnp.int32)
  if spec.valid is not None:
    segments = jnp.where(spec.valid.astype(bool), segments, PAD_SEGMENT)
  segments = jnp.pad(segments, ((0, 0), (0, length - t)), constant_values=PAD_SEGMENT)

  q = heads_first(q * jnp.asarray(scale, q.dtype), length)  # the kernel does not scale
  k, v = heads_first(k, length), heads_first(v, length)
  body = functools.partial(_local_attention, causal=spec.causal, window=spec.sliding_window,
                           interpret=interpret)
  out = run_sharded(body, q, k, v, segments)
  return out[:, :, :t].swapaxes(1, 2)  # [B, T, N, H]

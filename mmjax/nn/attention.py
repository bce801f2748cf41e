"""The attention function. Backends share one signature so layers never care which runs.

`xla` is the einsum reference used on CPU and in parity tests; `splash` is the Pallas TPU kernel
(`mmjax.nn.splash`; `splash_interpret` runs it through the Pallas interpreter, for CPU tests).
The mask is a dense boolean array, a `MaskSpec` (self-attention's structure) or a
`CrossMaskSpec` (cross-attention by image group): the kernel needs a spec, the einsum path
densifies it (and skips the blocks a causal one rules out). A dense mask (cached decoding, a
per-token cross-attention mask) takes the einsum path.
"""

import jax
import jax.numpy as jnp

from mmjax.nn.mask_spec import CrossMaskSpec, MaskSpec

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free

BACKENDS = ("xla", "splash", "splash_interpret")

# Causal self-attention on the einsum path runs its queries in blocks of about this many rows,
# each against the keys up to its own end, so the logits above the diagonal blocks (masked
# anyway) are neither computed nor differentiated: on XLA:CPU fwd+bwd of a 12/4-head layer about
# 2x faster at 1024 and 2048 tokens, the same at 321 (tools/bench/attention.py). Sequences too
# short for two blocks take the dense path.
CAUSAL_QUERY_BLOCK = 128


def _causal_block_count(length: int) -> int:
  return max(1, round(length / CAUSAL_QUERY_BLOCK))


def _xla_attention(q, k, v, mask, scale):
  # Heads first, each key/value head's query group flattened with the queries: [B, K, G*T, H].
  # The dots then read and write plain row-major blocks; with the heads in place
  # ('BTKGH,BSKH->BKGTS') XLA:CPU transposes the [T, S] logits and their gradients in strided
  # loop fusions (fwd+bwd of a 321-token, 12/4-head layer: 44 -> 20 ms on two cores).
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  q = q.reshape(b, t, kv_heads, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, h)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, H]
  logits = jnp.einsum("BKQH,BKSH->BKQS", q, k).astype(jnp.float32) * scale  # [B, K, G*T, S]
  if mask is not None:
    # mask [B, 1|N, T, S] -> [B, 1|K, G*T, S]
    heads = 1 if mask.shape[1] == 1 else kv_heads
    mask = jnp.broadcast_to(mask.reshape(mask.shape[0], heads, -1, t, s),
                            (mask.shape[0], heads, g, t, s)).reshape(mask.shape[0], heads, g * t, s)
    logits = jnp.where(mask, logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("BKQS,BKSH->BKQH", probs, v)  # [B, K, G*T, H]
  return out.reshape(b, kv_heads, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _causal_blocks_attention(q, k, v, mask, scale):
  """`_xla_attention` of causal self-attention, query block by query block, each over the keys
  up to the block's end. `mask [B|1, 1, T, T]` allows nothing above the diagonal."""
  t = q.shape[1]
  count = _causal_block_count(t)
  edges = [t * i // count for i in range(count + 1)]
  out = jnp.concatenate([
      _xla_attention(q[:, a:e], k[:, :e], v[:, :e], mask[:, :, a:e, :e], scale)
      for a, e in zip(edges[:-1], edges[1:])], axis=1)  # [B, T, N, H]
  # A query that may attend no key at all (a padding token) gets uniform weights over all T keys
  # from the dense softmax (every logit masked alike), not over its block's: give it the mean
  # of every value, as the dense path does.
  anything = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # [B|1, T, 1, 1]
  every_value = jnp.repeat(jnp.mean(v, axis=1), q.shape[2] // k.shape[2], axis=1)  # [B, N, H]
  return jnp.where(anything, out, every_value[:, None].astype(out.dtype))


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    scale: float,
    backend: str = "xla",
) -> jax.Array:
  """Softmax attention with grouped-query heads.

  Args:
    q: `[B, T, N, H]` queries.
    k, v: `[B, S, K, H]` keys and values, `N % K == 0`.
    mask: `[B, 1|N, T, S]` boolean, True where a query may attend (see `mmjax.nn.masks`; a row
      with no True gets the mean of the values), a `MaskSpec` (self-attention, T = S), a
      `CrossMaskSpec` (cross-attention by image group), or None (every key).
    scale: multiplies the logits (usually `H ** -0.5`).
  Returns:
    `[B, T, N, H]`.
  """
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"{q.shape[2]} query heads do not divide into {k.shape[2]} key/value heads")
  structural = isinstance(mask, MaskSpec) or (mask is None and q.shape[1] == k.shape[1])
  if backend in ("splash", "splash_interpret") and isinstance(mask, CrossMaskSpec):
    from mmjax.nn.splash_cross import splash_cross_attention

    return splash_cross_attention(q, k, v, mask, scale=scale,
                                  interpret=backend == "splash_interpret")
  if backend in ("splash", "splash_interpret") and structural:
    from mmjax.nn.splash import splash_attention

    return splash_attention(q, k, v, mask, scale=scale, interpret=backend == "splash_interpret")
  if backend in BACKENDS:
    if isinstance(mask, CrossMaskSpec):
      mask = mask.dense(q.shape[1], k.shape[1])
    if isinstance(mask, MaskSpec):
      dense = mask.dense(q.shape[1])
      if mask.causal and _causal_block_count(q.shape[1]) > 1:
        return _causal_blocks_attention(q, k, v, dense, scale)
      mask = dense
    return _xla_attention(q, k, v, mask, scale)
  raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")

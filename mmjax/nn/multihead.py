"""Multi-head attention layer: projections, optional q/k norm and RoPE, optional KV cache."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import Axes
from mmjax.nn.linear import Einsum
from mmjax.nn.norms import make_norm
from mmjax.nn.rope import apply_rope

KVCache = dict[str, jax.Array]  # {'k': [B, S, K, H], 'v': [B, S, K, H]}


def take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
  """`x [B, T, ...]` at `rows [B, P]` (sequence indices) -> `[B, P, ...]`."""
  return jnp.take_along_axis(x, rows.reshape(rows.shape + (1,) * (x.ndim - 2)), axis=1)


class MultiHeadAttention(nn.Module):
  """Self-attention with grouped-query heads.

  Kernels are out-major like torch's `Linear.weight`: query/key/value `[N|K, H, D]`, output
  `[D, N, H]`. Checkpoints then convert by reshaping alone, with no transposes (XLA picks its
  own layouts, so compute does not care).
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  axes: Axes
  qkv_bias: bool = False
  o_bias: bool = False
  qk_norm: bool = False  # a norm over head_dim before RoPE (Qwen3: RMS; Persimmon: layer)
  norm: str = "rms"  # the q/k norms' kind (`mmjax.nn.norms.NORMS`)
  norm_eps: float = 1e-6
  backend: str = "xla"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      mask: jax.Array | None,
      rope: tuple[jax.Array, jax.Array] | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | None = None,
      query_rows: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """`x [B, T, D]`, `mask [B, 1, T, S]` -> `[B, T, D]` and the updated cache.

    `query_rows [B, P]`: only these positions query (`mask [B, 1, P, S]`, output `[B, P, D]`);
    every position is still a key and a value.
    """
    d = x.shape[-1]
    a = self.axes
    n, k_heads, h = self.num_heads, self.num_kv_heads, self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def proj(name, heads, heads_axis, inputs):
      return Einsum(
          "BTD,NHD->BTNH", (heads, h, d), (heads_axis, a.head_dim, a.embed),
          bias_shape=(heads, h) if self.qkv_bias else None, bias_axes=(heads_axis, a.head_dim),
          name=name, **kw,
      )(inputs)

    queries = x if query_rows is None else take_rows(x, query_rows)
    q = proj("q", n, a.heads, queries)  # [B, T|P, N, H]
    k = proj("k", k_heads, a.kv_heads, x)  # [B, T, K, H]
    v = proj("v", k_heads, a.kv_heads, x)  # [B, T, K, H]
    if self.qk_norm:
      q = make_norm(self.norm, self.norm_eps, a.head_dim, self.param_dtype, name="q_norm")(q)
      k = make_norm(self.norm, self.norm_eps, a.head_dim, self.param_dtype, name="k_norm")(k)
    if rope is not None:
      q_rope = rope
      if query_rows is not None:  # cos, sin [B|1, T, R] -> [B, P, R]
        rows = len(query_rows)
        q_rope = tuple(take_rows(jnp.broadcast_to(r, (rows, *r.shape[1:])), query_rows)
                       for r in rope)
      q = apply_rope(q, *q_rope)
      k = apply_rope(k, *rope)
    if cache is not None:
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)  # [B, S, K, H]
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      cache = {"k": k, "v": v}
    out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                                scale=h**-0.5, backend=self.backend)  # [B, T, N, H]
    y = Einsum(
        "BTNH,DNH->BTD", (d, n, h), (a.embed, a.heads, a.head_dim),
        bias_shape=(d,) if self.o_bias else None, bias_axes=(a.embed,), name="o", **kw,
    )(out)
    return y, cache

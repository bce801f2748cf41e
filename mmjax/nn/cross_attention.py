"""Cross-attention layer: text queries attend to image states (Llama 3.2 Vision, Flamingo).

Keys and values depend on the images alone, so generation computes them once at prefill
(`CrossAttention.keys_values`) and hands them back at every decode step (`kv=`). No RoPE.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import Axes
from mmjax.nn.linear import Einsum
from mmjax.nn.mask_spec import CrossMaskSpec
from mmjax.nn.multihead import KVCache
from mmjax.nn.norms import LayerNorm, RMSNorm


class _ToHeads(nn.Module):
  """`[B, T, D] -> [B, T, N, H]` by the `Einsum` named `proj` (kernel `[N, H, D]`, D read from
  the input), then an RMSNorm over H named `norm` when given. Its parameters live in the
  parent's scope (`nn.share_scope`), so the layer reads q, k, v, q_norm, k_norm as
  `MultiHeadAttention` does."""

  heads: int
  head_dim: int
  heads_axis: str
  axes: Axes
  bias: bool
  proj: str
  norm: str | None
  norm_kind: str
  norm_eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.axes
    y = Einsum(
        "BTD,NHD->BTNH", (self.heads, self.head_dim, x.shape[-1]),
        (self.heads_axis, a.head_dim, a.embed),
        bias_shape=(self.heads, self.head_dim) if self.bias else None,
        bias_axes=(self.heads_axis, a.head_dim), name=self.proj, dtype=self.dtype,
        param_dtype=self.param_dtype,
    )(x)  # [B, T, N, H]
    if self.norm is not None:
      norm = LayerNorm if self.norm_kind == "layer" else RMSNorm
      y = norm(self.norm_eps, a.head_dim, self.param_dtype, name=self.norm)(y)
    return y


class _FromHeads(nn.Module):
  """`[B, T, N, H] -> [B, T, D]` by the `Einsum` named `o` (kernel `[D, N, H]`), in the parent's
  scope; D is given at the call (the query width)."""

  axes: Axes
  bias: bool
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, y: jax.Array, features: int) -> jax.Array:
    a = self.axes
    return Einsum(
        "BTNH,DNH->BTD", (features, *y.shape[2:]), (a.embed, a.heads, a.head_dim),
        bias_shape=(features,) if self.bias else None, bias_axes=(a.embed,), name="o",
        dtype=self.dtype, param_dtype=self.param_dtype,
    )(y)


class CrossAttention(nn.Module):
  """Grouped-query attention from `x [B, T, D]` to `states [B, S, D_kv]` (D_kv may differ).

  Kernels are out-major like `MultiHeadAttention`'s: q `[N, H, D]`, k and v `[K, H, D_kv]`, o
  `[D, N, H]`, so torch `Linear` weights convert by reshaping. `qk_norm`: a norm over head_dim
  of queries and keys after the split into heads: RMSNorm (Mllama's q_norm / k_norm) or, with
  `qk_norm_kind="layer"`, LayerNorm (IDEFICS' perceiver).
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  axes: Axes
  qk_norm: bool = False
  qk_norm_kind: str = "rms"  # "rms" | "layer"
  norm_eps: float = 1e-6
  q_bias: bool = False
  kv_bias: bool = False
  o_bias: bool = False
  backend: str = "xla"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    a = self.axes
    kw = dict(head_dim=self.head_dim, axes=a, norm_kind=self.qk_norm_kind,
              norm_eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: name if self.qk_norm else None
    self.to_q = _ToHeads(self.num_heads, heads_axis=a.heads, bias=self.q_bias, proj="q",
                         norm=norm("q_norm"), **kw)
    self.to_k = _ToHeads(self.num_kv_heads, heads_axis=a.kv_heads, bias=self.kv_bias, proj="k",
                         norm=norm("k_norm"), **kw)
    self.to_v = _ToHeads(self.num_kv_heads, heads_axis=a.kv_heads, bias=self.kv_bias, proj="v",
                         norm=None, **kw)
    self.from_heads = _FromHeads(a, self.o_bias, self.dtype, self.param_dtype)
    for child in (self.to_q, self.to_k, self.to_v, self.from_heads):
      nn.share_scope(self, child)

  def keys_values(self, states: jax.Array) -> KVCache:
    """`states [B, S, D_kv]` -> `{'k': [B, S, K, H], 'v': [B, S, K, H]}`, keys normed: what
    generation computes once per prompt and passes back as `kv`."""
    return {"k": self.to_k(states), "v": self.to_v(states)}

  def __call__(
      self,
      x: jax.Array,
      mask: CrossMaskSpec | jax.Array | None,
      states: jax.Array | None = None,
      kv: KVCache | None = None,
  ) -> jax.Array:
    """`x [B, T, D]` attends to `states [B, S, D_kv]` or to their precomputed `kv` -> `[B, T, D]`.

    `mask`: a `CrossMaskSpec` (both backends), a dense boolean `[B, 1|N, T, S]` (einsum path;
    see `mmjax.nn.masks.unmask_empty_rows` for Mllama's rows that see nothing), or None.
    """
    if (states is None) == (kv is None):
      raise ValueError("CrossAttention takes exactly one of `states` (image states [B, S, D_kv]) "
                       "and `kv` (their keys_values)")
    if kv is None:
      kv = self.keys_values(states)
    q = self.to_q(x)  # [B, T, N, H]
    out = dot_product_attention(q, kv["k"].astype(q.dtype), kv["v"].astype(q.dtype), mask,
                                scale=self.head_dim**-0.5, backend=self.backend)  # [B, T, N, H]
    return self.from_heads(out, x.shape[-1])  # [B, T, D]

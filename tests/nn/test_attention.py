"""The einsum attention path given a causal `MaskSpec` runs its queries in blocks against the keys
up to each block's end; it must give what the dense mask gives, values and gradients, for packed,
left- and right-padded rows and a sliding window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_models import max_diff, record
from mmjax.nn import attention
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.mask_spec import MaskSpec

T = 384  # three query blocks of CAUSAL_QUERY_BLOCK = 128
# Blocks only change the order of float32 sums: far below the 1e-4 parity tolerance.
BLOCKS_TOLERANCE = 1e-5


def _qkv(b, t, n, k, h, seed=0):
  r = np.random.default_rng(seed)
  return [jnp.asarray(r.normal(size=(b, t, heads, h)), jnp.float32) for heads in (n, k, k)]


def _rows(layout: str):
  """`segment_ids, valid [2, T]` for a row layout."""
  seg = np.ones((2, T), np.int32)
  if layout == "packed":
    seg[0, 90:] = 2  # two samples in row 0
    seg[0, 200:] = 3
    seg[1, 250:] = 0  # right padding in row 1
  elif layout == "left_padded":
    seg[0, :37] = 0  # queries with no key at all: the dense softmax spreads them over every key
  return jnp.asarray(seg), jnp.asarray((seg > 0).astype(np.int32))


@pytest.mark.parametrize("layout,window", [("packed", None), ("left_padded", None),
                                           ("packed", 100)])
def test_causal_blocks_match_the_dense_mask(layout, window):
  assert T > attention.CAUSAL_QUERY_BLOCK * 2
  q, k, v = _qkv(2, T, 6, 2, 32)
  seg, valid = _rows(layout)
  spec = MaskSpec(seg, valid, causal=True, sliding_window=window)

  def loss(mask, q, k, v):
    out = dot_product_attention(q, k, v, mask, scale=32**-0.5)
    return jnp.sum(jnp.sin(out)), out

  grad = lambda mask: jax.value_and_grad(lambda *a: loss(mask, *a), (0, 1, 2), has_aux=True)
  (_, want), want_grads = grad(spec.dense(T))(q, k, v)
  (_, got), got_grads = grad(spec)(q, k, v)
  diff = max_diff(got, want)  # every row, padding included
  grad_diff = max(max_diff(g, w) for g, w in zip(got_grads, want_grads))
  record(f"nn/causal_blocks_{layout}_{window}", max(diff, grad_diff))
  assert diff <= BLOCKS_TOLERANCE and grad_diff <= BLOCKS_TOLERANCE


def test_causal_blocks_skip_the_logits_above_the_diagonal():
  """The blocked path is the one taken, and it computes fewer logits than the dense one."""
  q, k, v = _qkv(1, T, 2, 2, 16)
  spec = MaskSpec(causal=True)

  def logits_elements(mask):
    jaxpr = jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, mask, scale=0.25))
    eqns = jaxpr(q, k, v).jaxpr.eqns
    return sum(np.prod(e.outvars[0].aval.shape) for e in eqns
               if e.primitive.name == "dot_general" and e.outvars[0].aval.shape[-1] != 16)

  dense, blocked = logits_elements(spec.dense(T)), logits_elements(spec)
  # Three blocks of 128 queries see 128, 256 and 384 keys: 2/3 of the dense T x T logits.
  assert blocked == dense * 2 // 3

"""Benchmark: causal self-attention forward + backward on the einsum (`xla`) path (CPU, float32).

mmjax hands the einsum path a `MaskSpec`, which runs the queries in blocks against the keys up
to each block's end (`mmjax.nn.attention.CAUSAL_QUERY_BLOCK`); the reference in the same run is
the same path with the dense mask (every logit computed, the masked ones thrown away), and torch's
`scaled_dot_product_attention(is_causal=True)` (its fused CPU kernel). Grouped-query heads
(12 query, 4 key/value, 64 wide, a Llama-style layer); median of `--repeats` after a warm-up.

    python tools/bench/attention.py [--lengths 321,1024,2048] [--batch 2] [--repeats 9]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

from machine import describe

HEADS, KV_HEADS, HEAD_DIM = 12, 4, 64


def median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def mmjax_fns(q, k, v):
  """fwd+bwd of the blocked and the dense einsum path: `(blocked, dense)` callables."""
  import jax
  import jax.numpy as jnp

  from mmjax.nn.attention import dot_product_attention
  from mmjax.nn.mask_spec import MaskSpec

  q, k, v = (jnp.asarray(x) for x in (q, k, v))
  spec = MaskSpec(causal=True)
  scale = HEAD_DIM**-0.5

  def fwd_bwd(mask):
    loss = lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, mask, scale=scale) ** 2)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return lambda: jax.block_until_ready(grad(q, k, v))

  return fwd_bwd(spec), fwd_bwd(spec.dense(q.shape[1]))


def torch_fn(q, k, v):
  import torch

  # [B, T, N, H] -> [B, N, T, H]; torch repeats the key/value heads itself (enable_gqa).
  q, k, v = (torch.tensor(x).transpose(1, 2).requires_grad_() for x in (q, k, v))

  def step():
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                           enable_gqa=True)
    (out**2).sum().backward()
    for x in (q, k, v):
      x.grad = None

  return step


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lengths", default="321,1024,2048", help="sequence lengths to time")
  parser.add_argument("--batch", type=int, default=2, help="rows")
  parser.add_argument("--repeats", type=int, default=9, help="timed repeats per case")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import torch

  from mmjax.nn.attention import CAUSAL_QUERY_BLOCK

  print(describe())
  print(f"fwd+bwd of causal attention, {HEADS}/{KV_HEADS} heads x {HEAD_DIM}, batch "
        f"{args.batch}, float32, torch threads {torch.get_num_threads()}; query block "
        f"{CAUSAL_QUERY_BLOCK}")
  print(f"{'tokens':>7}{'blocked ms':>12}{'dense ms':>10}{'torch sdpa ms':>15}"
        f"{'dense/blocked':>15}{'torch/blocked':>15}")
  rng = np.random.default_rng(0)
  for length in (int(x) for x in args.lengths.split(",")):
    q, k, v = (rng.normal(size=(args.batch, length, heads, HEAD_DIM)).astype(np.float32)
               for heads in (HEADS, KV_HEADS, KV_HEADS))
    blocked, dense = mmjax_fns(q, k, v)
    times = [median_ms(fn, args.repeats) for fn in (blocked, dense, torch_fn(q, k, v))]
    print(f"{length:7d}{times[0]:12.1f}{times[1]:10.1f}{times[2]:15.1f}"
          f"{times[1] / times[0]:14.2f}x{times[2] / times[0]:14.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())

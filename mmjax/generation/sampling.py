"""Next-token choice: greedy, or sampling after temperature, top-k and top-p (as transformers).

The filters match transformers' `TemperatureLogitsWarper`, `TopKLogitsWarper` and
`TopPLogitsWarper`, applied in that order; filtered logits become `-inf`.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """`temperature == 0` is greedy (argmax, first index on ties, as torch); `top_k=0` and
  `top_p=1` switch those filters off."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the `k` largest logits of `[B, V]` (and any tied with the k-th)."""
  k = min(k, logits.shape[-1])
  kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [B, 1]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Keeps the smallest set of largest logits whose probability reaches `p` (at least one)."""
  order = jnp.argsort(logits, axis=-1)  # ascending, [B, V]
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  remove_sorted = cumulative <= 1 - p
  remove_sorted = remove_sorted.at[..., -1].set(False)  # the most likely token always stays
  rows = jnp.arange(logits.shape[0])[:, None]
  remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
  return jnp.where(remove, -jnp.inf, logits)


def warp(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """float32 `[B, V]` logits -> the logits sampling draws from (temperature, top-k, top-p)."""
  logits = logits.astype(jnp.float32)
  if sampling.temperature not in (0, 1):
    logits = logits / sampling.temperature
  if sampling.top_k:
    logits = top_k_filter(logits, sampling.top_k)
  if sampling.top_p < 1:
    logits = top_p_filter(logits, sampling.top_p)
  return logits


def next_token(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
  """`[B, V]` logits -> `[B]` int32 tokens."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, warp(logits, sampling), axis=-1).astype(jnp.int32)

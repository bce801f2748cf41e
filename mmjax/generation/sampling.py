"""Next-token choice: greedy, or sampling after temperature, top-k and top-p (as transformers).

The filters match transformers' `TemperatureLogitsWarper`, `TopKLogitsWarper` and
`TopPLogitsWarper`, applied in that order; filtered logits become `-inf`.
"""

import dataclasses
from typing import NamedTuple

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


class Knobs(NamedTuple):
  """Sampling values as arrays, so that changing them does not recompile the decode loop."""

  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array

  @classmethod
  def of(cls, sampling: Sampling) -> "Knobs":
    return cls(jnp.float32(sampling.temperature or 1.0), jnp.int32(sampling.top_k),
               jnp.float32(sampling.top_p))


def _static(value) -> bool:
  return isinstance(value, (int, float))


def top_k_filter(logits: jax.Array, k) -> jax.Array:
  """Keeps the `k` largest logits of `[B, V]` (and any tied with the k-th); `k <= 0` keeps all."""
  v = logits.shape[-1]
  kth_index = v - jnp.clip(k, 1, v)  # in ascending order
  kth = jnp.take_along_axis(jnp.sort(logits, axis=-1),
                            jnp.broadcast_to(kth_index, logits.shape[:-1])[..., None], axis=-1)
  return jnp.where((k > 0) & (logits < kth), -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
  """Keeps the smallest set of largest logits whose probability reaches `p` (at least one);
  `p >= 1` keeps all."""
  order = jnp.argsort(logits, axis=-1)  # ascending, [B, V]
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  remove_sorted = (cumulative <= 1 - p) & (p < 1)
  remove_sorted = remove_sorted.at[..., -1].set(False)  # the most likely token always stays
  rows = jnp.arange(logits.shape[0])[:, None]
  remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
  return jnp.where(remove, -jnp.inf, logits)


def warp(logits: jax.Array, sampling: Sampling | Knobs) -> jax.Array:
  """float32 `[B, V]` logits -> the logits sampling draws from (temperature, top-k, top-p).

  Filters whose `Sampling` value is off are left out of the computation; `Knobs` always run them
  (switched off by value).
  """
  logits = jnp.asarray(logits, jnp.float32)
  t, k, p = sampling.temperature, sampling.top_k, sampling.top_p
  if not (_static(t) and t in (0, 1)):
    logits = logits / t
  if not (_static(k) and k == 0):
    logits = top_k_filter(logits, k)
  if not (_static(p) and p >= 1):
    logits = top_p_filter(logits, p)
  return logits


def next_token(logits: jax.Array, rng: jax.Array, sampling: Sampling | Knobs,
               greedy: bool | None = None) -> jax.Array:
  """`[B, V]` logits -> `[B]` int32 tokens; `greedy` defaults to `sampling.greedy`."""
  greedy = sampling.greedy if greedy is None else greedy
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, warp(logits, sampling), axis=-1).astype(jnp.int32)

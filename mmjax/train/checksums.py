"""A checksum per array of the train state, saved with each checkpoint and checked on restore.

Orbax 0.12.8 has no option to checksum array data: its zarr3 arrays get a `crc32c` codec on the
shard index only, its zarr2 arrays none, and OCDBT checksums its manifest and b-tree nodes but
not the (zstd-compressed) chunks they point to, so bytes flipped inside a chunk restore "fine"
with other values. This closes that gap.

The checksum of an array is `sum_i word_i * (2 i + 1) mod 2^32` over its elements as unsigned
words (`i` the row-major index): one jitted pass over each array where it lives, and the same
value however the array is sharded (integer sums wrap exactly, in any order), so a checkpoint
written on one mesh verifies on another. Any single flipped bit changes it (an odd multiplier
times 2^k is never 0 mod 2^32); so does moving a value to another index.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _words(x: jax.Array) -> jax.Array:
  """`x` as uint32 words, same shape (64-bit values: a trailing axis of 2)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = jnp.dtype(x.dtype).itemsize * 8
  if bits == 32:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if bits < 32:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]


def _checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  if words.ndim == 0:
    return words
  # Row-major index from iotas rather than a reshape, which would move a sharded array.
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    axis_index = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
    index = index + axis_index * np.uint32(stride % 2**32)
    stride *= words.shape[axis]
  return jnp.sum(words * (index * np.uint32(2) + np.uint32(1)), dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def checksums(tree: Any) -> dict[str, int]:
  """`{leaf path: checksum}` of a pytree of arrays (a collective in a multi-host job)."""
  sums = jax.device_get(_checksums(tree))
  return {jax.tree_util.keystr(path): int(value)
          for path, value in jax.tree_util.tree_leaves_with_path(sums)}


def mismatches(saved: dict[str, int], tree: Any) -> list[str]:
  """Leaf paths whose checksum differs from `saved` (leaves `saved` does not list are skipped)."""
  now = checksums(tree)
  return [path for path, value in saved.items() if now.get(path) != int(value)]

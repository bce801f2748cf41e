"""Decode throughput at the HBM-bandwidth roofline: what a slice can serve, before paying for it.

At a decode step every chip reads the decoder's weights it uses and its share of the KV cache,
and one token per prompt comes out. For the batch sizes people serve, those reads take longer
than the step's FLOPs, so `bytes read per chip / HBM bandwidth` bounds the step time from below
and `batch / that time` bounds the tokens per second from above.

Counted per chip, from each array's sharding: the decoder's layers, final norm and LM head (the
embedding table when tied: it is the head; otherwise the token embedding reads only B rows and is
left out), and the whole preallocated cache, which mmjax's decode loop attends over at every
step (slots not yet written are masked, not skipped). The vision tower runs in the prefill only.
A weight split over a mesh axis that also splits the batch (`data`, `fsdp`: FSDP) is gathered
whole onto every chip before its product, so each chip reads all of it; split over `tensor`,
each chip reads its slice. The interconnect time of those gathers is not counted.
"""

import dataclasses
import math
from typing import Any

import jax
from jax.sharding import NamedSharding

from mmjax.sharding import BATCH_AXES

# HBM bandwidth per chip, bytes/s (Cloud TPU system architecture pages).
HBM_BYTES_PER_S = {"v4": 1200e9, "v5p": 2765e9, "v5e": 819e9, "v6e": 1638e9}


def per_chip_bytes(tree: Any, gathered: tuple[str, ...] = ()) -> int:
  """Bytes one chip reads of a tree of arrays or `ShapeDtypeStruct`s with shardings (the
  largest shard where shards differ); splits over the mesh axes in `gathered` count as whole,
  unsharded leaves count whole."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    total += math.prod(_read_shape(leaf, gathered)) * jax.numpy.dtype(leaf.dtype).itemsize
  return total


def _read_shape(leaf, gathered: tuple[str, ...]) -> tuple[int, ...]:
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    return leaf.shape
  if not isinstance(sharding, NamedSharding):
    return sharding.shard_shape(leaf.shape)
  shape = []
  for i, dim in enumerate(leaf.shape):
    axes = sharding.spec[i] if i < len(sharding.spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    split = math.prod(sharding.mesh.shape[a] for a in axes if a not in gathered)
    shape.append(-(-dim // split))
  return tuple(shape)


def decode_weights(params: dict) -> dict:
  """The parameters a decode step reads in full: the decoder's, less the embedding table
  unless it is tied to the LM head."""
  decoder = params["decoder"]
  if "lm_head" in decoder:
    return {k: v for k, v in decoder.items() if k != "embed"}
  return dict(decoder)


@dataclasses.dataclass(frozen=True)
class DecodeRoofline:
  weight_bytes: int  # per chip, per step
  cache_bytes: int  # per chip, per step
  batch: int  # tokens out per step (one per prompt)
  chips: int
  hbm_bytes_per_s: float  # per chip

  @property
  def step_s(self) -> float:
    return (self.weight_bytes + self.cache_bytes) / self.hbm_bytes_per_s

  @property
  def tokens_per_s(self) -> float:
    """The whole slice's."""
    return self.batch / self.step_s

  @property
  def tokens_per_s_per_chip(self) -> float:
    return self.tokens_per_s / self.chips

  def describe(self) -> str:
    gib = 1024**3
    return (f"{self.tokens_per_s_per_chip:.1f} tokens/s per chip ({self.tokens_per_s:.0f} for "
            f"the slice, {1e3 * self.step_s:.2f} ms per step) at {self.hbm_bytes_per_s / 1e9:.0f} "
            f"GB/s: each step reads {self.weight_bytes / gib:.3f} GiB of weights + "
            f"{self.cache_bytes / gib:.3f} GiB of KV cache per chip")


def decode_roofline(params: dict, cache: Any, batch: int, chips: int,
                    chip: str) -> DecodeRoofline:
  """`params` and `cache` (`[L, B, S, K, H]` keys and values, or any tree) as placed for the
  decode loop; `chip` a key of `HBM_BYTES_PER_S`."""
  if chip not in HBM_BYTES_PER_S:
    raise ValueError(f"no HBM bandwidth known for TPU {chip!r}; known: {sorted(HBM_BYTES_PER_S)}")
  return DecodeRoofline(per_chip_bytes(decode_weights(params), gathered=BATCH_AXES),
                        per_chip_bytes(cache), batch, chips, HBM_BYTES_PER_S[chip])

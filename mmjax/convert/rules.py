"""Conversion rules: how one HF tensor becomes (part of) one mmjax parameter, and back.

A rule names a canonical HF key (`{i}` marks a layer of a scanned stack), a parameter path and a
transform. Transforms are exact inverses of each other, so HF -> mmjax -> HF is bit for bit.
"""

import dataclasses
import re
from typing import Iterable

import numpy as np


class Transform:
  """Maps an HF array to a parameter of shape `target` and back."""

  reshape_only = False  # True when the parameter holds the HF bytes in the same order

  def hf_shape(self, target: tuple[int, ...]) -> tuple[int, ...]:
    raise NotImplementedError

  def to_params(self, a: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    raise NotImplementedError

  def to_hf(self, p: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def fill(self, dest: np.ndarray, a: np.ndarray) -> None:
    """Writes `to_params(a)` into `dest` (one strided copy, no temporary)."""
    dest[...] = self.to_params(a, dest.shape)


class Same(Transform):
  """Identical shapes (embeddings, position tables, 1-D norms)."""

  reshape_only = True

  def hf_shape(self, target):
    return tuple(target)

  def to_params(self, a, target):
    return a

  def to_hf(self, p):
    return p


class Flat(Transform):
  """HF keeps a flat vector, mmjax a split one (a bias `[N*H]` <-> `[N, H]`)."""

  reshape_only = True

  def hf_shape(self, target):
    return (int(np.prod(target)),)

  def to_params(self, a, target):
    return a.reshape(target)

  def to_hf(self, p):
    return p.reshape(-1)


@dataclasses.dataclass(frozen=True)
class Linear(Transform):
  """torch `Linear.weight [out, in]` <-> kernel `[*in_dims, *out_dims]` (first `in_ndim` are in)."""

  in_ndim: int = 1

  def hf_shape(self, target):
    return (int(np.prod(target[self.in_ndim:])), int(np.prod(target[:self.in_ndim])))

  def to_params(self, a, target):
    return a.T.reshape(target)

  def to_hf(self, p):
    d_in = int(np.prod(p.shape[:self.in_ndim]))
    return np.ascontiguousarray(p.reshape(d_in, -1).T)

  def fill(self, dest, a, block: int = 256):
    # Tiled transpose: several times faster than one strided copy of a large matrix.
    out = dest.reshape(a.shape[1], a.shape[0])
    for i in range(0, a.shape[0], block):
      for j in range(0, a.shape[1], block):
        out[j:j + block, i:i + block] = a[i:i + block, j:j + block].T


@dataclasses.dataclass(frozen=True)
class Matrix(Transform):
  """torch `Linear.weight [out, in]` <-> an out-major kernel `[*out_dims, *in_dims]`: a reshape.

  mmjax's own layers keep torch's out-major layout so that conversion never transposes.
  """

  reshape_only = True

  out_ndim: int = 1

  def hf_shape(self, target):
    return (int(np.prod(target[:self.out_ndim])), int(np.prod(target[self.out_ndim:])))

  def to_params(self, a, target):
    return a.reshape(target)

  def to_hf(self, p):
    return p.reshape(self.hf_shape(p.shape))

  def fill(self, dest, a):
    dest.reshape(a.shape)[...] = a


class ConvPatch(Transform):
  """torch `Conv2d.weight [D, C, P, P]` <-> patch kernel `[P, P, C, D]` over NHWC patches."""

  def hf_shape(self, target):
    p, q, c, d = target
    return (d, c, p, q)

  def to_params(self, a, target):
    return a.transpose(2, 3, 1, 0)

  def to_hf(self, p):
    return np.ascontiguousarray(p.transpose(3, 2, 0, 1))


@dataclasses.dataclass(frozen=True)
class LeadingOnes(Transform):
  """A parameter saved with `count` leading axes of 1 (`[1, 1, D]` <-> `[D]`)."""

  count: int = 1
  reshape_only = True

  def hf_shape(self, target):
    return (1,) * self.count + tuple(target)

  def to_params(self, a, target):
    return a.reshape(target)

  def to_hf(self, p):
    return p.reshape(self.hf_shape(p.shape))


SAME, FLAT, CONV_PATCH = Same(), Flat(), ConvPatch()
LINEAR, LINEAR_OUT2 = Linear(1), Linear(2)  # in-major kernels (transposed on conversion)
MATRIX, HEADS_MATRIX = Matrix(1), Matrix(2)  # out-major kernels: [out, in], [N, H, D]


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # canonical HF key; '{i}' marks the layer index of a scanned stack
  path: str  # '/'-joined parameter path; stacked when `hf` has '{i}'
  transform: Transform = SAME
  # (index, count): a slice along axis 0 of the HF tensor; (index, count, groups): the index'th
  # of `count` blocks within each of `groups` (`mmjax.convert.plan.chunk_of`).
  chunk: tuple[int, ...] | None = None
  # The HF layer index of each slot of the stacked axis, when it is not the slot itself (a
  # decoder segment holding every fifth layer: `mmjax.decoders.layout`).
  layers: tuple[int, ...] | None = None

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf

  def hf_key(self, slot: int | None) -> str:
    """The canonical key of one slot of a stacked parameter (or of an unstacked one)."""
    if slot is None:
      return self.hf
    return self.hf.format(i=slot if self.layers is None else self.layers[slot])

  def prefixed(self, hf_prefix: str, path_prefix: str) -> "Rule":
    return dataclasses.replace(self, hf=hf_prefix + self.hf, path=path_prefix + self.path)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a saved checkpoint spells the canonical key prefixes (`canonical -> saved`)."""

  name: str
  prefixes: tuple[tuple[str, str], ...] = ()

  def to_saved(self, canonical: str) -> str:
    for canon, saved in sorted(self.prefixes, key=lambda p: -len(p[0])):
      if canonical.startswith(canon):
        return saved + canonical[len(canon):]
    return canonical


def compile_ignores(patterns: Iterable[str]) -> list[re.Pattern]:
  return [re.compile(p) for p in patterns]

"""Matching a model's parameters against a checkpoint's tensors, strictly.

The plan lists, for every parameter leaf, which saved HF tensors fill it (layer by layer for a
scanned stack). Building it checks everything that can be checked without reading data: every
tensor is used or explicitly ignored, every parameter is filled, every shape agrees.
"""

import dataclasses
from typing import Iterable

import numpy as np

from mmjax.convert.rules import Layout, Rule, compile_ignores


class ConversionError(ValueError):
  """The checkpoint does not fit the model; the message names the key at fault."""


@dataclasses.dataclass(frozen=True)
class Part:
  """One saved tensor (or one chunk of it) that fills one layer slot of a parameter."""

  key: str  # the key as saved
  layer: int | None  # slot in the stacked parameter, None when not stacked
  rule: Rule


@dataclasses.dataclass
class Plan:
  layout: Layout
  leaves: dict[str, list[Part]]  # parameter path -> parts, in layer order
  hf_shapes: dict[str, tuple[int, ...]]  # saved key -> expected full shape
  ignored: list[str]


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, path + "/"))
    else:
      out[path] = v
  return out


def _expected_shape(rule: Rule, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
  target = leaf_shape[1:] if rule.stacked else leaf_shape
  shape = rule.transform.hf_shape(tuple(target))
  if rule.chunk:
    shape = (shape[0] * rule.chunk[1], *shape[1:])
  return shape


def make_plan(
    rules: list[Rule],
    leaf_shapes: dict[str, tuple[int, ...]],
    saved_keys: Iterable[str],
    layouts: tuple[Layout, ...],
    ignores: Iterable[str],
) -> Plan:
  """Matches parameters to saved keys; raises `ConversionError` on any mismatch."""
  saved_keys = set(saved_keys)
  rules = [r for r in rules if r.path in leaf_shapes]
  unruled = sorted(set(leaf_shapes) - {r.path for r in rules})
  if unruled:
    raise ConversionError(f"no conversion rule fills parameters {unruled[:5]}")

  def instances(layout: Layout):
    for rule in rules:
      layers = range(leaf_shapes[rule.path][0]) if rule.stacked else [None]
      for i in layers:
        yield Part(layout.to_saved(rule.hf_key(i)), i, rule)

  # The layout is the one whose spelling of our keys the file matches best.
  layout = max(layouts, key=lambda lay: sum(p.key in saved_keys for p in instances(lay)))
  parts = list(instances(layout))
  ignore_res = compile_ignores(ignores)
  expected = {p.key for p in parts}
  missing = sorted(expected - saved_keys)
  if missing:
    raise ConversionError(f"missing key {missing[0]!r} in the checkpoint (layout {layout.name}"
                          f"{f'; {len(missing) - 1} more missing' if len(missing) > 1 else ''})")
  extra = sorted(saved_keys - expected)
  ignored = [k for k in extra if any(r.fullmatch(k) for r in ignore_res)]
  unexpected = [k for k in extra if k not in set(ignored)]
  if unexpected:
    raise ConversionError(
        f"unexpected key {unexpected[0]!r} in the checkpoint: no parameter takes it (layout "
        f"{layout.name}{f'; {len(unexpected) - 1} more' if len(unexpected) > 1 else ''})")
  leaves: dict[str, list[Part]] = {}
  hf_shapes: dict[str, tuple[int, ...]] = {}
  for p in parts:
    leaves.setdefault(p.rule.path, []).append(p)
    shape = _expected_shape(p.rule, leaf_shapes[p.rule.path])
    if hf_shapes.setdefault(p.key, shape) != shape:
      raise ConversionError(f"rules disagree on the shape of {p.key!r}")
  return Plan(layout, leaves, hf_shapes, ignored)


def check_shapes(plan: Plan, saved_shape) -> None:
  for key, expected in plan.hf_shapes.items():
    got = tuple(saved_shape(key))
    if got != expected:
      raise ConversionError(f"wrong shape for {key!r}: the checkpoint has {got}, the model "
                            f"config implies {expected}")


def chunk_of(array: np.ndarray, chunk: tuple[int, ...] | None) -> np.ndarray:
  """A rule's chunk of a saved tensor: `(index, count)` slices axis 0 into `count` blocks;
  `(index, count, groups)` reads axis 0 as `[groups, count, size]` (Persimmon's fused qkv,
  laid out per head) and takes `[:, index]`."""
  if chunk is None:
    return array
  index, count, groups = (*chunk, 1)[:3]
  blocks = array.reshape(groups, count, -1, *array.shape[1:])
  return blocks[:, index].reshape(-1, *array.shape[1:])


def join_chunks(pieces: list[np.ndarray], groups: int = 1) -> np.ndarray:
  """`chunk_of`'s inverse: the chunks (in index order) -> the saved tensor."""
  split = [p.reshape(groups, -1, *p.shape[1:]) for p in pieces]  # [groups, size, ...]
  joined = np.stack(split, axis=1)  # [groups, count, size, ...]
  return joined.reshape(-1, *pieces[0].shape[1:])

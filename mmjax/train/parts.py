"""Which parameters train: `train.trainable` names top-level components (`encoder`, `connector`,
`decoder`) or a family's finer parts (`Family.parts`: name -> regex over '/'-joined parameter
paths, e.g. Llama 3.2 Vision's `cross_attention` layers inside the decoder).

A leaf trains when its component or a part that matches it is named; its label (for learning-rate
multipliers) is the most specific such name: a part before its component.
"""

import re
from typing import Any, Callable, Mapping, Sequence

Parts = Mapping[str, str]


def check_names(names: Sequence[str], components: Sequence[str], parts: Parts, what: str) -> None:
  unknown = sorted(set(names) - set(components) - set(parts))
  if unknown:
    raise ValueError(f"{what} names {unknown}; the model's components are {sorted(components)}"
                     + (f" and its parts {sorted(parts)}" if parts else ""))


def labeller(trainable: Sequence[str], parts: Parts = {}) -> Callable[[tuple[str, ...]], str | None]:
  """`path -> label` of a leaf (None: frozen)."""
  patterns = [(name, re.compile(regex)) for name, regex in parts.items() if name in trainable]

  def label(path: tuple[str, ...]) -> str | None:
    joined = "/".join(path)
    for name, pattern in patterns:
      if pattern.fullmatch(joined):
        return name
    return path[0] if path[0] in trainable else None

  return label


def _is_branch(node: Any) -> bool:
  return isinstance(node, Mapping)


def split(params: dict, trainable: Sequence[str], parts: Parts = {}) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts with disjoint leaves; unknown names are an error."""
  check_names(trainable, list(params), parts, "train.trainable")
  label = labeller(trainable, parts)

  def go(tree, path):
    train, frozen = {}, {}
    for key, node in tree.items():
      here = (*path, key)
      if _is_branch(node):
        t, f = go(node, here)
        if t:
          train[key] = t
        if f:
          frozen[key] = f
      elif label(here) is not None:
        train[key] = node
      else:
        frozen[key] = node
    return train, frozen

  return go(params, ())


def merge(a: dict, b: dict) -> dict:
  """The union of two nested dicts with disjoint leaves (`split`'s inverse)."""
  out = dict(b)
  for key, node in a.items():
    out[key] = merge(node, out[key]) if key in out and _is_branch(node) else node
  return out


def label_tree(params: dict, trainable: Sequence[str], parts: Parts = {}) -> dict:
  """The trainable subtree's structure with each leaf's label."""
  label = labeller(trainable, parts)

  def go(tree, path):
    return {k: go(v, (*path, k)) if _is_branch(v) else label((*path, k)) for k, v in tree.items()}

  return go(params, ())

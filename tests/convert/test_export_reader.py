"""The exporter reads leaves in groups, within its memory budget, and drops them after last use."""

import numpy as np

from mmjax import checkpoint
from mmjax.convert.exporter import _LeafReader


def test_reads_ahead_within_the_budget_and_drops_used_leaves(monkeypatch):
  restores = []

  def load_params(ckpt_dir, paths):  # a fake checkpoint: leaf "a/x" holds one float32 per byte/4
    restores.append(["/".join(p) for p in paths])
    tree = {}
    for p in paths:
      tree.setdefault(p[0], {})[p[1]] = np.zeros(nbytes["/".join(p)] // 4, np.float32)
    return tree

  monkeypatch.setattr(checkpoint, "load_params", load_params)
  nbytes = {"a/q": 40, "a/k": 40, "a/v": 40, "b/w": 100, "c/w": 40, "d/w": 40}
  needs = [("qkv0", ["a/q", "a/k", "a/v"]), ("qkv1", ["a/q", "a/k", "a/v"]),
           ("big", ["b/w"]), ("c", ["c/w"]), ("d", ["d/w"])]
  reader = _LeafReader("unused", needs, nbytes, budget=120)
  held = []
  for key, paths in needs:
    assert sorted(reader.leaves(key)) == sorted(paths)
    held.append(sorted(reader.held))
  # q, k, v fill the budget; the 100-byte leaf, larger than what is left, comes alone; c and d
  # come together.
  assert restores == [["a/q", "a/k", "a/v"], ["b/w"], ["c/w", "d/w"]]
  assert held[2] == ["b/w"]  # q, k, v dropped after their last tensor
  assert held[3] == ["c/w", "d/w"]

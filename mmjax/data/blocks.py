"""Host sharding and shuffling of sources read in blocks (Parquet row groups, tar shards).

A Parquet row costs its whole row group to read, so a global random permutation of rows would
decode every row group once per row in it. Sources that have `blocks` (`[(first row, rows)]`)
are instead split between hosts by block, and each epoch visits the host's blocks in a seeded
random order, a window of `window` blocks at a time, the rows of a window in a seeded random
order: each row group is decoded about once per epoch (the source keeps the window's blocks in a
cache) while samples still mix across `window` blocks.

`BlockShuffleMapDataset` is a grain `MapDataset`: index -> row is a pure function of (seed,
epoch, index), so grain's iterator state (an index) resumes at the exact sample and worker
processes split indices as for any other source. Epoch `e` is indices `[e * len, (e+1) * len)`
(what `.repeat()` hands down), reshuffled with seed + e like grain's own shuffle.
"""

from __future__ import annotations

import bisect
import threading
from typing import Sequence

import grain
import numpy as np

DEFAULT_WINDOW = 8  # blocks whose rows are mixed together


def host_blocks(blocks: Sequence[tuple[int, int]], process_index: int,
                process_count: int) -> list[tuple[int, int]]:
  """This host's blocks: every process_count-th block, or, with fewer blocks than hosts, every
  process_count-th row (as blocks of one row: correct, but each host then reads every block)."""
  blocks = [(int(s), int(n)) for s, n in blocks if n > 0]
  if len(blocks) >= process_count:
    return blocks[process_index::process_count]
  total = sum(n for _, n in blocks)
  rows = [s + k for s, n in blocks for k in range(n)]
  return [(r, 1) for r in rows[process_index:total:process_count]]


class BlockShuffleMapDataset(grain.MapDataset):
  """The rows of `parent` (a source `MapDataset`) in this host's blocks, block-shuffled."""

  def __init__(self, parent, blocks: Sequence[tuple[int, int]], *, seed: int, shuffle: bool,
               window: int = DEFAULT_WINDOW):
    super().__init__(parent)
    self._blocks = np.asarray(blocks, np.int64).reshape(-1, 2)  # [n_blocks, (start, rows)]
    self._len = int(self._blocks[:, 1].sum())
    self._seed, self._shuffle, self._window = int(seed), bool(shuffle), max(1, int(window))
    self._init_caches()

  def _init_caches(self):
    self._lock = threading.Lock()  # grain reads with several threads
    self._epochs: dict = {}  # epoch -> (block order, window starts); the last two
    self._windows: dict = {}  # (epoch, window) -> rows; the last eight

  def _cached(self, cache: dict, key, size: int, make):
    with self._lock:
      if key in cache:
        return cache[key]
    value = make()
    with self._lock:
      cache[key] = value
      while len(cache) > size:
        cache.pop(next(iter(cache)))
    return value

  def __len__(self) -> int:
    return self._len

  def __str__(self) -> str:
    return f"BlockShuffleMapDataset(blocks={len(self._blocks)}, window={self._window})"

  def _epoch_windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    return self._cached(self._epochs, epoch, 2, lambda: self._make_epoch(epoch))

  def _make_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Block order of an epoch and the first in-epoch index of each window."""
    n = len(self._blocks)
    order = (np.random.default_rng([self._seed, epoch]).permutation(n) if self._shuffle
             else np.arange(n))
    sizes = self._blocks[order, 1]
    window_sizes = np.add.reduceat(sizes, np.arange(0, n, self._window))
    return order, np.concatenate([[0], np.cumsum(window_sizes)])

  def _window_rows(self, epoch: int, window: int) -> np.ndarray:
    return self._cached(self._windows, (epoch, window), 8,
                        lambda: self._make_window(epoch, window))

  def _make_window(self, epoch: int, window: int) -> np.ndarray:
    """Source rows of one window, in the order they are visited."""
    order, _ = self._epoch_windows(epoch)
    blocks = self._blocks[order[window * self._window:(window + 1) * self._window]]
    rows = np.concatenate([np.arange(s, s + n) for s, n in blocks])
    if self._shuffle:
      rows = rows[np.random.default_rng([self._seed, epoch, window]).permutation(len(rows))]
    return rows

  def _row(self, index: int) -> int:
    epoch, i = divmod(index, self._len)
    _, starts = self._epoch_windows(epoch)
    window = bisect.bisect_right(starts, i) - 1
    return int(self._window_rows(epoch, window)[i - starts[window]])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._row(index)]

  def __getstate__(self):  # to worker processes: without the lock and caches
    state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_epochs", "_windows")}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_caches()


def block_dataset(source, *, process_index: int, process_count: int, seed: int, shuffle: bool,
                  window: int = DEFAULT_WINDOW):
  """`MapDataset` of this host's rows of a blocked source, block-shuffled (see the docstring)."""
  blocks = host_blocks(source.blocks, process_index, process_count)
  return BlockShuffleMapDataset(grain.MapDataset.source(source), blocks, seed=seed,
                                shuffle=shuffle, window=window)

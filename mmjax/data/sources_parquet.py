"""Parquet shards as a data source (pyarrow), e.g. what Hugging Face `datasets` pushes to the
hub: `data.sources=[{"path": "shards/*.parquet"}]`.

Columns (see `mmjax.data.records`): `image` as a `{bytes, path}` struct, raw bytes or a path
(or `images`, a list of them), `conversations` / `messages` (lists of structs, or JSON text) or
`caption` / `txt` / `text`; `id` if present. Rows are read a row group at a time (Parquet's unit
of reading) and the source keeps the last few row groups decoded, so the block-shuffled order
(`mmjax.data.blocks`: one row-group `blocks` entry each) decodes each about once per epoch.

A row that cannot be turned into a sample, or a row group that cannot be read, becomes a raw
sample with an error (counted and skipped as ``bad_record``); a file whose footer cannot be read
is an error when the source opens, naming the file.
"""

from __future__ import annotations

import bisect
import collections
import threading

from mmjax.data.records import to_raw_sample
from mmjax.data.shards import expand_shards

SUFFIXES = (".parquet",)
CACHED_ROW_GROUPS = 20  # > 2 windows of mmjax.data.blocks.DEFAULT_WINDOW: threads read ahead


class ParquetSource:
  """Random access over the rows of Parquet files, in file then row order."""

  def __init__(self, paths, image_root: str | None = None,
               cached_row_groups: int = CACHED_ROW_GROUPS):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    self.paths = expand_shards(paths, SUFFIXES)
    self.image_root = image_root
    self.cached_row_groups = cached_row_groups
    self._groups = []  # (file index, row group, first row)
    self._file_starts = []  # first row of each file
    total = 0
    for f, path in enumerate(self.paths):
      self._file_starts.append(total)
      try:
        meta = pq.ParquetFile(path).metadata
      except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a broken footer
        raise ValueError(f"{path}: not a readable Parquet file: {e}") from e
      for g in range(meta.num_row_groups):
        self._groups.append((f, g, total))
        total += meta.row_group(g).num_rows
    self._len = total
    self._starts = [start for _, _, start in self._groups]
    self._init_cache()

  def _init_cache(self):
    self._lock = threading.Lock()
    self._cache: collections.OrderedDict = collections.OrderedDict()  # (file, group) -> rows
    # Open files per thread: a pyarrow ParquetFile read from two threads at once fails
    # ("ReadRangeCache did not find matching cache entry") or crashes, and the pipeline's
    # read-ahead threads would turn that into good rows skipped as bad ones.
    self._thread_files = threading.local()

  def __getstate__(self):  # to worker processes: open files and decoded rows stay behind
    return {k: v for k, v in self.__dict__.items()
            if k not in ("_lock", "_cache", "_thread_files")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_cache()

  def __len__(self) -> int:
    return self._len

  @property
  def blocks(self) -> list[tuple[int, int]]:
    """`(first row, rows)` of every row group."""
    ends = self._starts[1:] + [self._len]
    return [(s, e - s) for s, e in zip(self._starts, ends)]

  def _rows(self, f: int, g: int) -> list[dict] | Exception:
    key = (f, g)
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return self._cache[key]
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    try:
      files = self._thread_files.__dict__.setdefault("files", {})
      if f not in files:
        files[f] = pq.ParquetFile(self.paths[f])
      rows = files[f].read_row_group(g).to_pylist()
    except Exception as e:  # pylint: disable=broad-except  # a corrupt page: its rows are bad
      rows = e
    with self._lock:
      self._cache[key] = rows
      while len(self._cache) > self.cached_row_groups:
        self._cache.popitem(last=False)
    return rows

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._len:
      raise IndexError(f"row {index} of a {self._len}-row Parquet source")
    f, g, start = self._groups[bisect.bisect_right(self._starts, index) - 1]
    sample_id = f"{self.paths[f]} row {index - self._file_starts[f]}"
    rows = self._rows(f, g)
    if isinstance(rows, Exception):
      from mmjax.data.sources import _bad  # pylint: disable=g-import-not-at-top

      return _bad(sample_id, "bad_record", f"row group {g} is unreadable: {rows}")
    row = rows[index - start]
    return to_raw_sample(row, str(row["id"]) if row.get("id") is not None else sample_id,
                         self.image_root)

  def __repr__(self):
    return f"ParquetSource({len(self.paths)} files, {len(self._groups)} row groups, n={len(self)})"

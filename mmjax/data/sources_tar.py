"""WebDataset tar shards as a data source: `data.sources=[{"path": "shards/{00000..00099}.tar"}]`
(what img2dataset and most WebDataset pipelines write).

A sample is the run of tar members sharing a key (the member name up to the first dot of its
base name: `000123.jpg`, `000123.json`, `000123.txt`). Its image is the `jpg` / `jpeg` / `png` /
`webp` member; its text is a `json` member's `conversations` / `messages` (a conversation with
the image), else a caption (`txt`, or the `json`'s `caption`): user the image, assistant the
caption.

Shards are read with Python's `tarfile` for their member index (names, data offsets, sizes; one
pass over the headers when the source opens) and then by offset (`os.pread`): random access,
so the pipeline keeps grain's index-based shuffling, exact resumption and worker sharding. (The
`webdataset` package streams shards front to back and has no random access.) Each shard is one
`blocks` entry (`mmjax.data.blocks`). A sample without an image or text, with undecodable JSON,
or cut off by a truncated shard is a raw sample with an error (``bad_record``), counted and
skipped; a shard whose headers stop early keeps the samples before the damage (logged).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import threading

from mmjax.data.records import to_raw_sample
from mmjax.data.shards import expand_shards

log = logging.getLogger("mmjax.data")

SUFFIXES = (".tar",)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("json", "txt", "caption", "text")


def split_key(name: str) -> tuple[str, str]:
  """`dir/000123.seg.jpg` -> (`dir/000123`, `seg.jpg`): WebDataset's key / extension split."""
  directory, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return os.path.join(directory, stem) if directory else stem, ext.lower() if dot else ""


def index_shard(path: str) -> tuple[list[tuple[str, dict[str, tuple[int, int]]]], str | None]:
  """`[(key, {ext: (data offset, size)})]` in shard order, and an error message if the headers
  stop early (the samples before the damage are kept)."""
  samples: list = []
  error = None
  try:
    with tarfile.open(path, mode="r:") as tar:
      for member in tar:
        if not member.isfile():
          continue
        key, ext = split_key(member.name)
        if not samples or samples[-1][0] != key:
          samples.append((key, {}))
        samples[-1][1][ext] = (member.offset_data, member.size)
  except (tarfile.TarError, OSError, EOFError) as e:
    error = f"{path}: tar headers unreadable after {len(samples)} samples: {e}"
  return samples, error


class WebDatasetSource:
  """Random access over the samples of WebDataset tar shards, in shard then member order."""

  def __init__(self, paths, image_root: str | None = None):
    self.paths = expand_shards(paths, SUFFIXES)
    self.image_root = image_root
    self._keys: list[str] = []
    self._members: list[dict] = []
    self._shard_of: list[int] = []
    self._starts: list[int] = []
    for s, path in enumerate(self.paths):
      samples, error = index_shard(path)
      if error:
        log.warning("%s", error)
      if not samples and error:
        raise ValueError(f"{error}: not a tar file?")
      self._starts.append(len(self._keys))
      for key, members in samples:
        self._keys.append(key)
        self._members.append(members)
        self._shard_of.append(s)
    self._init_files()

  def _init_files(self):
    self._lock = threading.Lock()
    self._fds: dict[int, int] = {}

  def __getstate__(self):  # to worker processes: without open file descriptors
    return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_fds")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_files()

  def __del__(self):
    for fd in getattr(self, "_fds", {}).values():
      try:
        os.close(fd)
      except OSError:
        pass

  def __len__(self) -> int:
    return len(self._keys)

  @property
  def blocks(self) -> list[tuple[int, int]]:
    """`(first sample, samples)` of every shard."""
    ends = self._starts[1:] + [len(self._keys)]
    return [(s, e - s) for s, e in zip(self._starts, ends)]

  def _read(self, shard: int, offset: int, size: int) -> bytes:
    with self._lock:
      if shard not in self._fds:
        self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
      fd = self._fds[shard]
    data = os.pread(fd, size, offset)  # no shared file position: safe from several threads
    if len(data) != size:
      raise EOFError(f"member cut off: {len(data)} of {size} bytes")
    return data

  def __getitem__(self, index: int) -> dict:
    from mmjax.data.sources import _bad  # pylint: disable=g-import-not-at-top

    shard, members = self._shard_of[index], self._members[index]
    sample_id = f"{self.paths[shard]}:{self._keys[index]}"
    fields = {}
    try:
      image = next((e for e in IMAGE_EXTS if e in members), None)
      if image is not None:
        fields["image"] = self._read(shard, *members[image])
      for ext in TEXT_EXTS:
        if ext in members:
          data = self._read(shard, *members[ext])
          fields[ext] = json.loads(data) if ext == "json" else data.decode("utf-8")
    except (OSError, EOFError) as e:
      return _bad(sample_id, "bad_record", f"unreadable member: {e}")
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
      return _bad(sample_id, "bad_record", f"undecodable text member: {e}")
    record = fields["json"] if isinstance(fields.get("json"), dict) else {}
    if "image" in fields:
      record["image"] = fields["image"]
    for ext in ("txt", "caption", "text"):
      if ext in fields:
        record.setdefault(ext, fields[ext])
    return to_raw_sample(record, sample_id, self.image_root)

  def __repr__(self):
    return f"WebDatasetSource({len(self.paths)} shards, n={len(self)})"

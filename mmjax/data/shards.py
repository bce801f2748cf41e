"""Shard lists from a path pattern: brace ranges as WebDataset writes them
(`shards/{00000..00099}.tar`, `{a,b}`), globs (`shards/*.parquet`), or a directory.

Brace expansion is a few lines here rather than the `braceexpand` package: it is the only piece
of it we need, and the numeric ranges keep their zero padding as WebDataset names shards.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Sequence

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
  """`a{0..2}b` -> [a0b, a1b, a2b]; `{01..03}` keeps the width (01, 02, 03); `{x,y}` -> x, y;
  several braces expand left to right (their product)."""
  match = _BRACE.search(pattern)
  if match is None:
    return [pattern]
  body = match.group(1)
  numeric = _RANGE.match(body)
  if numeric:
    lo, hi = int(numeric.group(1)), int(numeric.group(2))
    width = len(numeric.group(1)) if numeric.group(1).lstrip("-").startswith("0") else 0
    step = 1 if hi >= lo else -1
    items = [str(i).zfill(width) for i in range(lo, hi + step, step)]
  elif "," in body:
    items = body.split(",")
  else:  # `{}` or `{x}`: not an expansion, kept as written
    return [pattern[:match.end()] + rest for rest in expand_braces(pattern[match.end():])]
  head, tail = pattern[:match.start()], pattern[match.end():]
  return [head + item + rest for item in items for rest in expand_braces(tail)]


def expand_shards(spec: str | Sequence[str], suffixes: tuple[str, ...]) -> list[str]:
  """Every shard a spec names, in order: braces expanded, globs matched (sorted), a directory
  read for files ending in `suffixes`. Missing files are an error that names them."""
  if not isinstance(spec, str):
    return [p for item in spec for p in expand_shards(item, suffixes)]
  if os.path.isdir(spec):
    paths = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.endswith(suffixes))
    if not paths:
      raise FileNotFoundError(f"no {'/'.join(suffixes)} shards in the directory {spec}")
    return paths
  paths = []
  for pattern in expand_braces(spec):
    if any(c in pattern for c in "*?["):
      found = sorted(glob.glob(pattern))
      if not found:
        raise FileNotFoundError(f"no shards match {pattern!r}")
      paths += found
    else:
      paths.append(pattern)
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} of the {len(paths)} shards of {spec!r} are missing, "
                            f"e.g. {missing[0]}")
  return paths


def is_shard_spec(spec: str, suffixes: tuple[str, ...]) -> bool:
  """Whether `spec` names shards with one of `suffixes` (a directory of them counts)."""
  if os.path.isdir(spec):
    return any(f.endswith(suffixes) for f in os.listdir(spec))
  return spec.endswith(suffixes)


def open_sharded_source(spec: str, image_root: str | None = None):
  """A `ParquetSource` for `.parquet` shards, a `WebDatasetSource` for `.tar` shards (patterns
  or a directory of them), else None."""
  from mmjax.data import sources_parquet, sources_tar  # pylint: disable=g-import-not-at-top

  if is_shard_spec(spec, sources_parquet.SUFFIXES):
    return sources_parquet.ParquetSource(spec, image_root)
  if is_shard_spec(spec, sources_tar.SUFFIXES):
    return sources_tar.WebDatasetSource(spec, image_root)
  return None

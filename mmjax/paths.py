"""Paths as the storage layers want them.

Orbax refuses relative destinations ("Snapshot destination must be absolute"), and a relative
path also changes meaning when a library changes directory, so every path that reaches Orbax is
made absolute here, once. Remote paths (`gs://bucket/run`) are already absolute and stay as given.
"""

import os


def is_remote(path: str) -> bool:
  """`gs://...`, `s3://...`: a URL that `os.path` must not touch."""
  return "://" in str(path)


def absolute(path: str) -> str:
  """`path` made absolute against the current directory (remote paths unchanged)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)

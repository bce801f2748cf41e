"""Fault injection: runs of the real `mmjax` command that are killed, starved of disk or fed
hostile files (helpers in `fault_helpers.py`).

Subprocesses share a JAX compilation cache (one directory per test session), so each restart of
the tiny run pays for tracing but not for XLA compilation again.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402

from fault_helpers import ROOT  # noqa: E402


@pytest.fixture(scope="session")
def env(tmp_path_factory):
  """The environment of every subprocess: this checkout first on the path, unbuffered output,
  CPU JAX with the test session's 8 devices, a shared compilation cache."""
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
  return dict(os.environ, PYTHONPATH=path,
              PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

"""Test setup: CPU JAX with 8 fake devices (set before JAX starts), helpers importable."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(__file__))

# One XLA compilation cache per test session, shared by the xdist workers and every `mmjax`
# subprocess they start: many tests build the same tiny models (each Trainer traces its step
# anew, each resumed run is a new process), and XLA's compilation is most of their time on 2
# cores. The controller makes the directory before the workers start (they inherit the
# environment) and removes it at the end; a cache the caller set is left alone.
_SESSION_CACHE = "PYTEST_SESSION_JAX_CACHE"


def pytest_configure(config):
  if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import tempfile  # pylint: disable=g-import-not-at-top

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax-test-jax-cache-")
  os.environ[_SESSION_CACHE] = os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_unconfigure(config):
  cache = os.environ.get(_SESSION_CACHE)
  if cache and not hasattr(config, "workerinput"):
    import shutil  # pylint: disable=g-import-not-at-top

    shutil.rmtree(cache, ignore_errors=True)

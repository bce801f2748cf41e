"""mmjax.hostmem: freed large allocations stay mapped, so using them again costs no page faults."""

import os
import subprocess
import sys

import pytest

from mmjax import hostmem

# From a worker thread (as XLA:CPU allocates), mallocs, touches and frees 256 MiB twice and prints
# the minor page faults of the second round. glibc maps such a request afresh each time by default.
_PROBE = """
import ctypes, ctypes.util, resource, sys, threading
from mmjax import hostmem
kept = hostmem.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 256 << 20, []
def run():
  for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=run)
worker.start()
worker.join()
print(kept, faults[1])
"""

PAGES = (256 << 20) // 4096


def probe(mode: str, **env) -> tuple[str, int]:
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                       check=True, env={**os.environ, **env}).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
  kept, faults = probe("keep")
  assert kept == "True"
  assert faults < PAGES // 20, faults
  # glibc's defaults fault every page in again: the probe measures what it claims to.
  kept, faults = probe("defaults")
  assert kept == "False" and faults > PAGES // 2, faults
  # the opt-out leaves the defaults alone
  kept, faults = probe("keep", **{hostmem.OPT_OUT: "1"})
  assert kept == "False" and faults > PAGES // 2, faults


def test_cpu_only_follows_jax_platforms(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert hostmem.runs_on_cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
  assert not hostmem.runs_on_cpu_only()

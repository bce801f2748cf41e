"""Keep freed host memory mapped, so a CPU train step does not page-fault its buffers every step.

XLA:CPU allocates each execution's temporary buffer (about 1.7 GB for the 125M-parameter train
step of `tools/bench/train_step.py`) with `posix_memalign` from a worker thread. glibc serves a
request that large from a fresh `mmap` and unmaps it when freed, so every step faults all of it in
again (about 420k minor faults and 0.9 CPU-seconds per step there) and waits on the `munmap`.
GPU and TPU runtimes keep a pool; glibc does the same once large requests come from the main heap
(one arena, no `mmap`) and that heap is never trimmed. The cost: the process keeps its peak host
memory until it exits, which a training process does anyway.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
OPT_OUT = "MMJAX_RETURN_HOST_MEMORY"  # set to 1 to leave glibc's defaults alone


def runs_on_cpu_only() -> bool:
  """Whether JAX will run on the host CPU: JAX_PLATFORMS says only `cpu`, or neither libtpu nor a
  CUDA plugin is installed. Decided without starting JAX."""
  platforms = os.environ.get("JAX_PLATFORMS")
  if platforms is not None:
    return platforms.strip() == "cpu"
  plugins = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin")
  return not any(importlib.util.find_spec(name) for name in plugins)


def keep_freed_memory() -> bool:
  """Route large allocations through glibc's main heap and never trim it; returns whether it did.

  Call before JAX starts: threads that already allocated keep their own arena (which maps large
  requests afresh whatever the settings). A no-op off glibc or with MMJAX_RETURN_HOST_MEMORY=1.
  """
  if os.environ.get(OPT_OUT, "0") not in ("", "0") or not sys.platform.startswith("linux"):
    return False
  name = ctypes.util.find_library("c")
  if name is None:
    return False
  libc = ctypes.CDLL(name)
  if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
    return False  # not glibc (musl has no mallopt tunables)
  ok = libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
  return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, -1))

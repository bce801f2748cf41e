"""Multi-host: `jax.distributed.initialize` from the environment (before any device use), and the
few host-side values the processes must agree on (counts, temporary paths, data positions).

- TPU VM slices and GKE (xpk): jax finds the coordinator and this worker's id from the TPU
  metadata / environment by itself (`TPU_WORKER_HOSTNAMES`, `MEGASCALE_*`), so `initialize()`
  takes no arguments there.
- Anywhere else (several processes on one machine, `launch/local_multihost.sh`, or a custom
  cluster): `MMJAX_COORDINATOR=host:port`, `MMJAX_NUM_PROCESSES`, `MMJAX_PROCESS_ID`.
"""

import json
import os
import uuid
from typing import Any

import jax
import numpy as np


def _tpu_multihost() -> bool:
  # A CPU host with libtpu installed gets a warning sentence in TPU_WORKER_HOSTNAMES (with a
  # comma): only a list of real host names counts.
  hosts = [h.strip() for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")]
  real = len(hosts) > 1 and all(h and not any(c.isspace() for c in h) for h in hosts)
  return real or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize_from_env() -> bool:
  """Joins the job's other processes when the environment describes several; True if it did."""
  coordinator = os.environ.get("MMJAX_COORDINATOR")
  if coordinator:
    try:
      count, index = int(os.environ["MMJAX_NUM_PROCESSES"]), int(os.environ["MMJAX_PROCESS_ID"])
    except KeyError as e:
      raise ValueError(f"MMJAX_COORDINATOR is set but {e.args[0]} is not") from None
    jax.distributed.initialize(coordinator, count, index)
    return True
  if _tpu_multihost():
    jax.distributed.initialize()
    return True
  return False


# Helpers for the places where processes must agree on host-side values. Each is a no-op
# (no collective) in a single-process run.


def is_main_process() -> bool:
  """Process 0 writes the shared files (metrics, metadata) and prints the summary."""
  return jax.process_index() == 0


def sum_over_processes(value: int) -> int:
  """A host-local count (e.g. images in this host's share of the batch) summed over processes."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  return int(np.sum(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def concat_over_processes(array: np.ndarray) -> np.ndarray:
  """Host-local rows of equal shape on every process -> all rows, in process order."""
  if jax.process_count() == 1:
    return np.asarray(array)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(np.asarray(array), tiled=True))


def shared_token() -> str:
  """A random hex token that every process gets the same (process 0's): for temporary paths
  that all processes write into."""
  token = np.frombuffer(uuid.uuid4().bytes[:8], np.uint8)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    token = np.asarray(multihost_utils.broadcast_one_to_all(token))
  return bytes(token.astype(np.uint8)).hex()


def gather_json(value: Any) -> list[Any]:
  """Every process's JSON-serialisable `value`, indexed by process (e.g. each host's data
  iterator position, which differs between hosts once packing consumes samples unevenly)."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray(len(data), np.int64))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:len(data)] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max length]
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]


def barrier(name: str) -> None:
  """Waits until every process gets here."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)

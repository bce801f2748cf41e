"""Multi-host start-up: `jax.distributed.initialize` from the environment, before any device use.

- TPU VM slices and GKE (xpk): jax finds the coordinator and this worker's id from the TPU
  metadata / environment by itself (`TPU_WORKER_HOSTNAMES`, `MEGASCALE_*`), so `initialize()`
  takes no arguments there.
- Anywhere else (several processes on one machine, `launch/local_multihost.sh`, or a custom
  cluster): `MMJAX_COORDINATOR=host:port`, `MMJAX_NUM_PROCESSES`, `MMJAX_PROCESS_ID`.
"""

import os

import jax


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

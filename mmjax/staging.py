"""Staging directories: work is written to `OUT.tmp-TOKEN/` and renamed to `OUT` when complete,
so a failure leaves nothing at `OUT`; and the staging directories a killed process left behind
are removed by the next writer of the same `OUT`.

Each staging directory records its owner (host, pid, and the process's start time, which tells a
reused pid apart) in `OWNER_FILE`. A sibling `OUT.tmp-*` is stale when its owner ran on this host
and is gone, or, when the owner cannot be checked (another host on a shared file system, or no
owner file), when nothing in it changed for `STALE_AFTER_S`.
"""

import glob
import json
import os
import shutil
import socket
import time

OWNER_FILE = ".mmjax-owner.json"
STALE_AFTER_S = 24 * 3600


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]  # field 22; the name may hold spaces
  except (OSError, IndexError):
    return None


def owner() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def path_for(final: str, token: str) -> str:
  return f"{final.rstrip('/')}.tmp-{token}"


def create(final: str, token: str) -> str:
  """Makes `final`'s staging directory and records this process as its owner."""
  tmp = path_for(final, token)
  os.makedirs(tmp, exist_ok=True)
  with open(os.path.join(tmp, OWNER_FILE), "w") as f:
    json.dump(owner(), f)
  return tmp


def publish(tmp: str, final: str) -> None:
  """Renames the finished staging directory to `final` (without the owner record)."""
  record = os.path.join(tmp, OWNER_FILE)
  if os.path.exists(record):
    os.remove(record)
  os.rename(tmp, final)


def remove(tmp: str, settle_s: float = 0.3, attempts: int = 20) -> None:
  """Removes a staging directory for good. When a save fails, TensorStore still finishes the
  writes it had in flight after the caller moved on, and those recreate their directories: so
  remove, and again until nothing has come back for `settle_s`."""
  for _ in range(attempts):
    shutil.rmtree(tmp, ignore_errors=True)
    time.sleep(settle_s)
    if not os.path.exists(tmp):
      return


def _owner_gone(record: dict) -> bool | None:
  """True / False when the owner can be checked from here; None when it cannot."""
  if record.get("host") != socket.gethostname():
    return None
  pid = int(record.get("pid", -1))
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # alive, under another user
    return False
  started = _start_time(pid)
  return record.get("start") is not None and started is not None and started != record["start"]


def _last_change(path: str) -> float:
  newest = os.path.getmtime(path)
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      try:
        newest = max(newest, os.path.getmtime(os.path.join(root, name)))
      except OSError:
        pass
  return newest


def is_stale(tmp: str) -> bool:
  try:
    with open(os.path.join(tmp, OWNER_FILE)) as f:
      gone = _owner_gone(json.load(f))
  except (OSError, ValueError, TypeError, AttributeError):
    gone = None
  if gone is not None:
    return gone
  return time.time() - _last_change(tmp) > STALE_AFTER_S


def remove_stale(final: str) -> list[str]:
  """Removes the stale staging directories of `final`; returns them."""
  removed = []
  for tmp in sorted(glob.glob(glob.escape(final.rstrip("/")) + ".tmp-*")):
    if os.path.isdir(tmp) and is_stale(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
      removed.append(tmp)
  return removed

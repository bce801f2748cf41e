"""Helpers of the fault-injection tests: running the real `mmjax` command, the moments to
inject a fault, the tiny training run every test uses, and a small disk."""

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The embedded shapes run, shrunk to seconds: 1-layer 32-wide towers, batch 8 (the 8 test devices).
TINY = ["--config.model.vision.num_layers=1", "--config.model.vision.hidden_size=32",
        "--config.model.vision.intermediate_size=64", "--config.model.decoder.num_layers=1",
        "--config.model.decoder.hidden_size=32", "--config.model.decoder.intermediate_size=64",
        "--config.model.decoder.head_dim=8", "--config.data.batch_size=8",
        "--config.optim.warmup_steps=2", "--config.eval.size=100"]


def mmjax(*args) -> list[str]:
  return [sys.executable, "-m", "mmjax.cli", *map(str, args)]


def start(args, env, **kw) -> subprocess.Popen:
  return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.005):
  """Polls `predicate()` until true; fails if `proc` ends first or time runs out."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = predicate()
    if value:
      return value
    if proc.poll() is not None:
      pytest.fail(f"the run ended (rc {proc.returncode}) before the fault could be injected:\n"
                  f"{proc.stdout.read()}")
    time.sleep(poll)
  proc.kill()
  pytest.fail(f"timed out waiting for the moment to inject the fault:\n{proc.stdout.read()}")


def kill(proc: subprocess.Popen, sig=signal.SIGKILL, timeout: float = 180) -> str:
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=timeout)
  return out


def metrics(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def logged_steps(workdir) -> list[int]:
  return [r["step"] for r in metrics(workdir) if "loss" in r]


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in metrics(workdir) if "loss" in r}


def leftovers(directory) -> list[str]:
  """Staging / temporary entries anywhere under `directory` (none may survive a finished run)."""
  found = []
  for root, dirs, files in os.walk(directory):
    found += [os.path.join(root, n) for n in dirs + files
              if ".tmp-" in n or "orbax-checkpoint-tmp" in n or n.endswith(".tmp")]
  return found


# --- a small disk --------------------------------------------------------------------------------


def _can_mount() -> bool:
  if os.geteuid() != 0 or not shutil.which("mount"):
    return False
  probe = "/tmp/mmjax-mount-probe"
  os.makedirs(probe, exist_ok=True)
  ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                      capture_output=True).returncode == 0
  if ok:
    subprocess.run(["umount", probe], check=True)
  return ok


def _can_unshare() -> bool:
  return bool(shutil.which("unshare")) and subprocess.run(
      ["unshare", "-rm", "true"], capture_output=True).returncode == 0


def _limit_file_size(size: int):
  def preexec():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
  return preexec


def _listing(directory: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, n), directory)
                for root, dirs, files in os.walk(directory) for n in dirs + files)


@contextlib.contextmanager
def small_disk(directory: str, size: int, file_size_limit: bool = False):
  """Yields `run(args, env) -> (CompletedProcess, [paths left under directory])` for a command
  whose writes to `directory` fail after about `size` bytes: a tmpfs of that size mounted there
  (as root, or in a user + mount namespace with `unshare`), else (or with `file_size_limit`) a
  file size limit (RLIMIT_FSIZE) on the process, which caps each file rather than the disk."""
  os.makedirs(directory, exist_ok=True)
  mode = ("file_size_limit" if file_size_limit else "mount" if _can_mount()
          else "unshare" if _can_unshare() else "file_size_limit")
  listing = directory.rstrip("/") + ".listing"

  def run(args, env):
    kw = dict(env=env, capture_output=True, text=True, timeout=600)
    if mode == "mount":
      return subprocess.run(args, **kw), _listing(directory)
    if mode == "file_size_limit":
      return subprocess.run(args, preexec_fn=_limit_file_size(size), **kw), _listing(directory)
    # unshare: the tmpfs lives in the namespace; list it there, before it goes.
    script = (f'mount -t tmpfs -o size={size} tmpfs "{directory}" || exit 99; "$@"; rc=$?; '
              f'(cd "{directory}" && find . -mindepth 1 | sed "s|^./||" | sort) > "{listing}"; '
              'exit $rc')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *args], **kw)
    with open(listing) as f:
      return proc, [line for line in f.read().splitlines() if line]

  if mode == "mount":
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory], check=True)
  try:
    yield run
  finally:
    if mode == "mount":
      subprocess.run(["umount", "-l", directory], check=True)


def tiny_config(*overrides):
  """The config `mmjax train --workdir W *TINY *overrides` runs, built here for in-process runs."""
  from mmjax.train.cli import add_optional_keys, apply_overrides, load_config

  cfg = load_config(None)
  add_optional_keys(cfg)
  apply_overrides(cfg, [*TINY, *overrides])
  return cfg

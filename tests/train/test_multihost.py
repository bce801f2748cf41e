"""Multi-host training on one machine: 2 processes x 4 CPU devices (launch/local_multihost.sh)
train a few steps and checkpoint from every process; a single process restores that checkpoint
onto a different mesh (data 2 x fsdp 4 instead of fsdp 8) and continues. Every loss must match
an uninterrupted single-process run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hf_models import TOLERANCE, record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "train", "multihost_worker.py")


def _env(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("MMJAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


def _run(cmd, devices, out):
  done = subprocess.run(cmd, env=_env(devices), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  with open(out) as f:
    return json.load(f)


@pytest.mark.slow
def test_two_processes_checkpoint_restore_other_mesh_match_single_process(tmp_path):
  steps, save_at = 4, 2
  ref = _run([sys.executable, WORKER, "--workdir", str(tmp_path / "ref"), "--steps", str(steps),
              "--out", str(tmp_path / "ref.json")], 8, tmp_path / "ref.json")
  multi = _run(["bash", os.path.join(ROOT, "launch", "local_multihost.sh"), "-n", "2", "-d", "4",
                "--", sys.executable, WORKER, "--workdir", str(tmp_path / "mh"), "--steps",
                str(save_at), "--save-at", str(save_at), "--out", str(tmp_path / "mh.json")],
               4, tmp_path / "mh.json")
  resumed = _run([sys.executable, WORKER, "--workdir", str(tmp_path / "mh"), "--steps", str(steps),
                  "--restore", "--mesh", "2,4,1", "--out", str(tmp_path / "resumed.json")],
                 8, tmp_path / "resumed.json")
  assert multi["processes"] == 2 and multi["devices"] == 8
  assert sorted(resumed["losses"]) == [str(s) for s in range(save_at + 1, steps + 1)]
  combined = {**multi["losses"], **resumed["losses"]}
  want = np.array([ref["losses"][str(s)] for s in range(1, steps + 1)])
  got = np.array([combined[str(s)] for s in range(1, steps + 1)])
  diff = float(np.abs(got - want).max())
  record("train/multihost_2x4_restore_data2_fsdp4_losses", diff)
  assert diff <= TOLERANCE, (got, want)
  assert len(set(np.round(want, 4))) == steps  # the losses move: the steps really train


def test_tpu_worker_list_needs_real_host_names(monkeypatch):
  from mmjax import distributed

  monkeypatch.delenv("MEGASCALE_COORDINATOR_ADDRESS", raising=False)
  # What libtpu's start-up leaves on a CPU host: a warning sentence (with a comma), no hosts.
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "WARNING: could not determine TPU worker hostnames "
                     "or IP addresses, please set env var `TPU_WORKER_HOSTNAMES` manually")
  assert not distributed._tpu_multihost()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2")
  assert not distributed._tpu_multihost()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
  assert distributed._tpu_multihost()


def _mmjax_train_two_processes(workdir, *overrides):
  """`mmjax train` (the embedded default, shortened) as 2 processes x 4 CPU devices."""
  cmd = ["bash", os.path.join(ROOT, "launch", "local_multihost.sh"), "-n", "2", "-d", "4", "--",
         sys.executable, "-m", "mmjax.cli", "train", "--workdir", str(workdir),
         "--config.train.steps=6", "--config.train.log_every=1", "--config.data.batch_size=16",
         "--config.optim.warmup_steps=2", "--config.checkpoint.every_steps=2",
         "--config.checkpoint.async_save=false", "--config.eval.size=20", *overrides]
  done = subprocess.run(cmd, env=_env(4), capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
  return done.stdout


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_mmjax_train_on_two_processes_resumes_exactly(tmp_path):
  """The real `mmjax train` on two processes: each host reads its own share of the shapes data;
  process 0 alone writes the metrics and the eval; checkpoints keep each host's data position,
  so a run stopped at step 3 and resumed logs the losses of an uninterrupted run bit for bit; the
  final model is written once."""
  out = _mmjax_train_two_processes(tmp_path / "whole")
  whole = _metrics(tmp_path / "whole")
  assert "[0] eval_accuracy" in out and "[1] eval_accuracy" not in out
  losses = {r["step"]: r["loss"] for r in whole if "loss" in r}
  assert sorted(losses) == list(range(1, 7))  # one writer: each step logged once
  assert "eval_accuracy" in whole[-1]
  assert os.path.isdir(tmp_path / "whole" / "model")

  _mmjax_train_two_processes(tmp_path / "split", "--config.train.stop_after=3")
  out = _mmjax_train_two_processes(tmp_path / "split")
  assert "[0] resumed from" in out and "[1] resumed from" in out
  with open(tmp_path / "split" / "checkpoints" / "6" / "data" / "metadata") as f:
    assert len(json.load(f)["hosts"]) == 2  # one data position per host
  split = {r["step"]: r["loss"] for r in _metrics(tmp_path / "split") if "loss" in r}
  assert split == losses

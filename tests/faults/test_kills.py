"""`mmjax train` killed again and again: SIGTERM at start-up, kill -9 during an async checkpoint
save and at a random step, SIGTERM during the eval; every re-launch resumes, and the finished run
logs the losses of an uninterrupted one, each step once, with its eval once. `mmjax convert`
killed while writing: the next conversion removes what it left.

The kill points are drawn from a seeded generator (`MMJAX_FAULT_SEED`, printed on failure)."""

import os
import random
import signal

from fault_helpers import (TINY, kill, leftovers, logged_steps, losses, metrics, mmjax, start,
                      tiny_config, wait_for)
from hf_files import tiny_llava
from mmjax.train.loop import train

STEPS = 12
RUN = [*TINY, f"--config.train.steps={STEPS}", "--config.checkpoint.every_steps=2",
       "--config.checkpoint.keep=2", "--config.train.log_every=3"]


def _saving(workdir):
  """True while Orbax writes a step (its temporary step directory exists)."""
  ckpts = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpts) and any("orbax-checkpoint-tmp" in n for n in os.listdir(ckpts))


def _steps_saved(workdir):
  ckpts = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) if os.path.isdir(ckpts) else []


def test_killed_again_and_again_then_resumed_exactly(tmp_path, env):
  seed = int(os.environ.get("MMJAX_FAULT_SEED", random.randrange(1 << 16)))
  rng = random.Random(seed)
  note = f"(MMJAX_FAULT_SEED={seed})"
  straight, faulty = str(tmp_path / "straight"), str(tmp_path / "faulty")
  assert train(tiny_config(*RUN[len(TINY):]), straight)["exit_code"] == 0
  command = mmjax("train", "--workdir", faulty, *RUN)

  # 1. SIGTERM while starting (imports, tracing): the process ends as terminated, writes nothing.
  proc = start(command, env)
  wait_for(lambda: os.path.exists(os.path.join(faulty, "config.json")), proc)
  out = kill(proc, signal.SIGTERM)
  assert proc.returncode in (-signal.SIGTERM, 143), out
  assert not _steps_saved(faulty) and not logged_steps(faulty), out

  # 2. kill -9 while an async save of a step past a random one is being written.
  after = rng.randrange(1, 6)
  proc = start(command, env)
  wait_for(lambda: logged_steps(faulty) and max(logged_steps(faulty)) >= after, proc)
  wait_for(lambda: _saving(faulty), proc)
  kill(proc)
  assert all(s <= STEPS for s in _steps_saved(faulty)), note

  # 3. kill -9 at a random later step (once the resumed run has dropped the rows logged after
  # its checkpoint: it rewrites metrics.jsonl as a new file).
  resumed = max(_steps_saved(faulty) or [0])
  at = rng.randrange(min(resumed + 1, STEPS - 2), STEPS - 1)
  path = os.path.join(faulty, "metrics.jsonl")
  stale_file = os.stat(path).st_ino if max(logged_steps(faulty), default=0) > resumed else None
  proc = start(command, env)
  wait_for(lambda: (os.stat(path).st_ino != stale_file
                    and max(logged_steps(faulty), default=0) >= at), proc)
  kill(proc)

  # 4. SIGTERM during the eval that follows the last step: exit 143, the eval not logged.
  proc = start(command, env)
  lines = []
  wait_for(lambda: lines.append(proc.stdout.readline()) or "model written to" in lines[-1], proc)
  out = "".join(lines) + kill(proc, signal.SIGTERM)
  assert proc.returncode == 143 and "preempted (SIGTERM) during the eval" in out, out + note
  assert not [r for r in metrics(faulty) if "eval_accuracy" in r], note

  # 5. The re-launch evaluates; every step logged once with the uninterrupted run's losses.
  proc = start(command, env)
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0 and "eval_accuracy" in out, out + note
  assert logged_steps(faulty) == list(range(1, STEPS + 1)), note
  assert losses(faulty) == losses(straight), note
  evals = [r for r in metrics(faulty) if "eval_accuracy" in r]
  assert len(evals) == 1 and evals == [r for r in metrics(straight) if "eval_accuracy" in r], note
  assert not leftovers(faulty), leftovers(faulty)
  assert _steps_saved(faulty) == [STEPS - 2, STEPS]  # keep=2 of good checkpoints


def test_a_killed_conversion_is_cleaned_up_by_the_next(tmp_path, env):
  """kill -9 while `mmjax convert` writes: its `OUT.tmp-*` stays behind until the next conversion
  to the same OUT, which removes it (its owner is gone) and succeeds."""
  hf = tiny_llava(str(tmp_path / "hf"))
  out = str(tmp_path / "ck")
  command = mmjax("convert", "--hf", hf, "--out", out, "--quiet")
  proc = start(command, env)
  staged = lambda: [n for n in os.listdir(tmp_path) if n.startswith("ck.tmp-")]
  wait_for(lambda: any(os.path.exists(os.path.join(tmp_path, n, "params.partial_save"
                                                   ".orbax-checkpoint-tmp")) for n in staged()),
           proc)
  kill(proc)
  left = staged()
  assert left and not os.path.exists(out)
  proc = start(command, env)
  output = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, output
  assert f"removed {os.path.join(tmp_path, left[0])}, left by an interrupted conversion" in output
  assert sorted(os.listdir(tmp_path)) == ["ck", "hf"]

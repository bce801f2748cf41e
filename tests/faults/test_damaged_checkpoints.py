"""Damaged train checkpoints: the newest that restores and verifies is used, the damaged newer
ones are deleted (never restored again, never counted by `keep`), and the resumed run logs an
uninterrupted run's losses; when none restores, training stops with one line naming each.

Damage: a truncated data file, a deleted OCDBT manifest, a deleted array metadata file, a cut
data-position file, a byte flipped in the OCDBT manifest (Orbax's crc32c finds it) and a byte
flipped inside an array's compressed data that Orbax restores as other values without a word
(the checksum per array saved with each checkpoint finds it)."""

import glob
import os
import shutil
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fault_helpers import TINY, leftovers, losses, mmjax, tiny_config
from mmjax.train.checkpoints import CheckpointRestoreError, Checkpoints, abstract_like
from mmjax.train.loop import Trainer, train

RUN = ["--config.train.steps=8", "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3",
       "--config.train.log_every=1", "--config.eval.kind="]


def _flip(path: str, where: float) -> None:
  with open(path, "r+b") as f:
    f.seek(int(os.path.getsize(path) * where))
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))


def _truncate(path: str) -> None:
  os.truncate(path, os.path.getsize(path) // 2)


def _data_files(step_dir: str) -> list[str]:
  """The OCDBT data files of a step's state, largest first, relative to the step directory."""
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return [os.path.relpath(f, step_dir) for f in sorted(files, key=os.path.getsize, reverse=True)]


def _orbax_restore(workdir: str, step: int, abstract):
  """The state as Orbax alone restores it (no checksum verification)."""
  ckpts = Checkpoints(workdir, 2, 3)
  try:
    return ckpts.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
  finally:
    ckpts.close()


def _find(stopped: str, tmp: str, abstract, damages, outcome: str):
  """The first of `damages` (`(function, relative path, argument)`) that gives `outcome` on a
  copy of checkpoint 6: 'fails' (Orbax raises) or 'silent' (Orbax restores other values). Which
  data file holds which array, and which files a finalised OCDBT database still reads, is
  Orbax's business: the damage is found by trying rather than assumed."""
  good = jax.tree.leaves(jax.device_get(_orbax_restore(stopped, 6, abstract)))
  copy = os.path.join(tmp, "probe")
  for damage in damages:
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(stopped, copy)
    _apply(damage, os.path.join(copy, "checkpoints", "6"))
    try:
      state = jax.tree.leaves(jax.device_get(_orbax_restore(copy, 6, abstract)))
    except Exception:  # pylint: disable=broad-except
      if outcome == "fails":
        return damage
      continue
    if outcome == "silent" and any(not np.array_equal(a, b) for a, b in zip(state, good)):
      return damage
  pytest.fail(f"none of the {len(damages)} damages tried gave {outcome!r}")


def _apply(damage, step_dir: str) -> None:
  function, relative, *args = damage
  function(os.path.join(step_dir, relative), *args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The config, a directory with an uninterrupted 8-step run ("straight") and the same run
  stopped after step 6 ("stopped": checkpoints 2, 4, 6), the abstract train state, and the
  damages to apply to a step directory."""
  root = tmp_path_factory.mktemp("damaged")
  cfg = tiny_config(*RUN)
  train(cfg, str(root / "straight"))
  stopped = str(root / "stopped")
  train(cfg, stopped, stop_after=6)
  trainer = Trainer.build(cfg)
  abstract = abstract_like(trainer.abstract_state, trainer.state_shardings)
  files = _data_files(os.path.join(stopped, "checkpoints", "6"))
  damage = {
      "truncated_data_file": _find(stopped, str(root), abstract,
                                   [(_truncate, f) for f in files], "fails"),
      "flipped_data_byte": _find(stopped, str(root), abstract,
                                 [(_flip, f, w) for f in files for w in (0.5, 0.3, 0.7, 0.1, 0.9)],
                                 "silent"),
      "deleted_manifest": (os.remove, "state/manifest.ocdbt"),
      "flipped_manifest_byte": (_flip, "state/manifest.ocdbt", 0.5),
      "deleted_array_metadata": (os.remove, "state/_METADATA"),
      "cut_data_position": (os.truncate, "data/metadata", 10),
  }
  return cfg, root, abstract, damage


def _steps(workdir) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


@pytest.mark.parametrize("kind", ["truncated_data_file", "flipped_data_byte", "deleted_manifest",
                                  "flipped_manifest_byte", "deleted_array_metadata",
                                  "cut_data_position"])
def test_a_damaged_newest_checkpoint_is_reported_deleted_and_the_previous_used(runs, tmp_path,
                                                                               capsys, kind):
  _, root, abstract, damage = runs
  workdir = str(shutil.copytree(root / "stopped", tmp_path / "run"))
  _apply(damage[kind], os.path.join(workdir, "checkpoints", "6"))
  capsys.readouterr()
  ckpts = Checkpoints(workdir, 2, 3)
  try:
    step, _, _ = ckpts.restore_latest(abstract)
  finally:
    ckpts.close()
  out = capsys.readouterr().out
  assert step == 4, out
  assert "warning: checkpoint 6 in" in out and "failed to restore" in out
  assert "removed the damaged checkpoint 6" in out and _steps(workdir) == [2, 4]
  assert max(len(line) for line in out.splitlines()) < 600  # TensorStore's specs left out
  if kind == "flipped_data_byte":  # what Orbax alone restores without a word
    assert "arrays differ from the checksums saved with them" in out


def test_resumed_after_damage_equals_an_uninterrupted_run(runs, tmp_path):
  cfg, root, _, damage = runs
  workdir = str(shutil.copytree(root / "stopped", tmp_path / "run"))
  _apply(damage["flipped_data_byte"], os.path.join(workdir, "checkpoints", "6"))
  summary = train(cfg, workdir)
  assert summary["start_step"] == 4 and summary["final_step"] == 8
  assert losses(workdir) == losses(root / "straight")
  assert _steps(workdir) == [4, 6, 8] and not leftovers(workdir)  # 6 written afresh, 2 rotated out


def test_when_no_checkpoint_restores_training_stops_with_one_line(runs, tmp_path, env):
  _, root, abstract, damage = runs
  workdir = str(shutil.copytree(root / "stopped", tmp_path / "run"))
  for step, kind in ((2, "deleted_manifest"), (4, "cut_data_position"), (6, "flipped_data_byte")):
    _apply(damage[kind], os.path.join(workdir, "checkpoints", str(step)))
  ckpts = Checkpoints(workdir, 2, 3)
  with pytest.raises(CheckpointRestoreError, match="none of the 3 checkpoints in .* restores"):
    ckpts.restore_latest(abstract)
  ckpts.close()
  proc = subprocess.run(mmjax("train", "--workdir", workdir, *TINY, *RUN), env=env,
                        capture_output=True, text=True, timeout=600)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("mmjax train: error:")]
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr
  assert errors[0].startswith("mmjax train: error: none of the 3 checkpoints")
  assert "Traceback" not in proc.stderr
  assert "step 6: " in errors[0] and "step 2: " in errors[0] and "move " in errors[0]
  assert _steps(workdir) == [2, 4, 6]  # nothing deleted, nothing trained from step 0
  assert sorted(losses(workdir)) == list(range(1, 7))

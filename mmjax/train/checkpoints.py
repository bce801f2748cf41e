"""Train checkpoints with Orbax's CheckpointManager: async, every N steps, keep K, resumable.

Each step directory holds the train state and every host's data-iterator position (hosts read
different shards, and packing consumes them unevenly), so a resumed run continues with exactly the
batches an uninterrupted one would have seen, and a checksum per array of the state
(`mmjax/train/checksums.py`), checked on restore.

Restoring takes the newest checkpoint that restores and verifies; the newer ones that failed are
reported and deleted, so they are never restored again, their steps are saved afresh, and `keep`
counts only good checkpoints. When none restores, training stops with an error naming each
failure (it never silently starts again from step 0). Half-written step directories of a killed
save (`*.orbax-checkpoint-tmp*`) are removed when the manager opens.
"""

import glob
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mmjax import distributed, paths, staging
from mmjax.errors import UserError
from mmjax.train import checksums

log = logging.getLogger("mmjax.train")


class CheckpointRestoreError(UserError):
  """Checkpoints exist but none of them restores."""


def _short(error: BaseException, limit: int = 300) -> str:
  """`Type: first line` of a restore error (TensorStore appends whole specs to its messages)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text if len(text) <= limit else text[:limit] + " ..."
  return f"{type(error).__name__}: {text}"


class Checkpoints:
  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.join(paths.absolute(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, every_steps),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def due(self, step: int, force: bool = False) -> bool:
    """Whether `save(step, ..., force)` writes a checkpoint."""
    return step not in self.manager.all_steps() and (force or self.manager.should_save(step))

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """`data_state`: this host's iterator position (a collective: every process calls save)."""
    if not self.due(step, force):  # e.g. a final save on an interval step
      return False
    saved = {"hosts": distributed.gather_json(data_state),  # written by process 0
             "checksums": checksums.checksums(state)}
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(saved)), force=force)

  def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    saved = restored["data"]
    changed = checksums.mismatches(saved.get("checksums") or {}, restored["state"])
    if changed:
      raise ValueError(f"{len(changed)} arrays differ from the checksums saved with them (bytes "
                       f"changed on disk), e.g. state{changed[0]}")
    return restored["state"], saved

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores; a broken one is reported, deleted, and the previous
    tried. None when there is no checkpoint; CheckpointRestoreError when none restores."""
    failed: list[tuple[int, str]] = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, saved = self._restore(step, abstract_state)
      except Exception as e:  # Orbax raises many types for damaged files
        failed.append((step, _short(e)))
        log.warning("checkpoint at step %d failed to restore (%s); trying the previous one",
                    step, failed[-1][1])
        print(f"warning: checkpoint {step} in {self.directory} failed to restore "
              f"({failed[-1][1]}); trying the previous one")
        continue
      agreed = distributed.gather_json(step)
      if len(set(agreed)) > 1:  # a host-local read failure: no host may delete or go on alone
        raise CheckpointRestoreError(f"the processes restored different checkpoints {agreed} "
                                     f"from {self.directory}; check each host's file system")
      for bad, _ in failed:  # never restored again; the resumed run writes these steps afresh
        self.manager.delete(bad)
        print(f"removed the damaged checkpoint {bad} from {self.directory}")
      return step, state, _this_host(saved, step)
    if failed:
      details = "; ".join(f"step {step}: {error}" for step, error in failed)
      raise CheckpointRestoreError(
          f"none of the {len(failed)} checkpoints in {self.directory} restores ({details}). "
          "If the config changed since they were written, restore it; to start afresh, move "
          f"{self.directory} away")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.manager.close()
    finally:
      self._remove_incomplete()

  def _remove_incomplete(self) -> None:
    """Step directories a failed save left half-written: Orbax would remove them at the next
    start, but a full disk wants the space now."""
    if paths.is_remote(self.directory) or not distributed.is_main_process():
      return
    for tmp in glob.glob(os.path.join(glob.escape(self.directory), "*.orbax-checkpoint-tmp*")):
      staging.remove(tmp)


def _this_host(saved: dict, step: int) -> dict:
  """This process's data position from what `save` wrote."""
  hosts = saved.get("hosts")
  if hosts is None:  # written before positions were kept per host: one position for all
    return saved
  if len(hosts) != jax.process_count():  # hosts read other shards now: no exact continuation
    message = (f"checkpoint {step} was written by {len(hosts)} processes, this job has "
               f"{jax.process_count()}: every host continues its data from the first host's "
               f"position (an exact resume needs {len(hosts)} processes; the mesh may differ)")
    log.warning(message)
    print(f"warning: {message}")
    return hosts[0]
  return hosts[jax.process_index()]


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with shardings: the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)

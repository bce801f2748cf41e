"""Train checkpoints with Orbax's CheckpointManager: async, every N steps, keep K, resumable.

Each step directory holds the train state and the data iterator's position, so a resumed run
continues with exactly the batches an uninterrupted one would have seen.
"""

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("mmjax.train")


class Checkpoints:
  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, every_steps),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    if step in self.manager.all_steps():  # e.g. a final save on an interval step
      return False
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)), force=force)

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores; a broken one is reported and the previous tried."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=ocp.args.JsonRestore()))
      except Exception as e:  # Orbax raises many types for damaged files
        log.warning("checkpoint at step %d failed to restore (%s: %s); trying the previous one",
                    step, type(e).__name__, e)
        print(f"warning: checkpoint {step} in {self.directory} failed to restore "
              f"({type(e).__name__}: {e}); trying the previous one")
        continue
      return step, restored["state"], restored["data"]
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with shardings: the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)

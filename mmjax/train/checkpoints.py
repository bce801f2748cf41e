"""Train checkpoints with Orbax's CheckpointManager: async, every N steps, keep K, resumable.

Each step directory holds the train state and every host's data-iterator position (hosts read
different shards, and packing consumes them unevenly), so a resumed run continues with exactly the
batches an uninterrupted one would have seen.
"""

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mmjax import distributed, paths

log = logging.getLogger("mmjax.train")


class Checkpoints:
  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
    self.directory = os.path.join(paths.absolute(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, every_steps),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """`data_state`: this host's iterator position (a collective: every process calls save)."""
    if step in self.manager.all_steps():  # e.g. a final save on an interval step
      return False
    if not (force or self.manager.should_save(step)):
      return False
    hosts = {"hosts": distributed.gather_json(data_state)}  # written by process 0
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(hosts)), force=force)

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
      return step, restored["state"], _this_host(restored["data"], step)
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


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

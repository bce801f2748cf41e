"""Metrics: `metrics.jsonl`, TensorBoard events, a progress bar, and model FLOPs (counted
analytically by each family: `mmjax.models.flops`)."""

import json
import os
import sys
import time
from typing import Any

import numpy as np

from mmjax.models.flops import count_params  # noqa: F401 (re-exported)


def flops_per_step(config, params: dict, batch_rows: int, seq_len: int, images: int,
                   trainable=("encoder", "connector", "decoder"), image_grid_thw=None,
                   attention=("decoder", "encoder")) -> float:
  """Model FLOPs of one training step (forward + backward) of `batch_rows x seq_len` tokens with
  `images` real image tiles, or, for native-resolution encoders (Qwen-VL), the patch grids
  `image_grid_thw [M, 3]` (zero rows for unused slots); `attention` names the stacks whose
  attention products (QK^T, AV) are counted. The family counts (`Family.train_flops`)."""
  from mmjax.models.registry import family_of_config

  batch = {"input_ids": np.empty((batch_rows, seq_len), np.int8),
           "image_mask": np.ones((images,), bool)}
  if image_grid_thw is not None:
    batch["image_grid_thw"] = np.asarray(image_grid_thw)
  return family_of_config(config).train_flops(config, params, batch, tuple(trainable), attention)


class MetricsWriter:
  """One JSON object per logged step; TensorBoard scalars; a progress bar on a terminal.

  On resume from `start_step`, rows of later steps (logged before the kill, after the checkpoint)
  are dropped, as are TensorBoard's events from them: the resumed run logs those steps again.
  `logged_at_start` holds what was logged at `start_step` itself (e.g. a finished run's eval).
  """

  def __init__(self, workdir: str, total_steps: int, start_step: int):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.logged_at_start = self._keep_rows_through(self.path, start_step)
    self._file = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)
    except ImportError:  # tensorboardX is a dependency; keep training if it is broken
      self._tb = None
    self._bar = None
    if sys.stderr.isatty():
      from tqdm import tqdm

      self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                       dynamic_ncols=True)
    self._last = time.perf_counter()

  @staticmethod
  def _keep_rows_through(path: str, step: int) -> dict[str, Any]:
    """Drops the rows of steps after `step` (a resumed run logs them again) and a line cut short by
    a kill; returns the values logged at `step` itself."""
    if not os.path.exists(path):
      return {}
    kept, at_step, dropped = [], {}, False
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
          keep = isinstance(record, dict) and int(record["step"]) <= step and line.endswith("\n")
        except (ValueError, KeyError, TypeError):
          keep = False
        if not keep:
          dropped = True
          continue
        kept.append(line)
        if record["step"] == step:
          at_step.update(record)
    if dropped:  # written aside and renamed: a kill now leaves the old file or the new one
      with open(path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
    return at_step

  def write(self, step: int, values: dict[str, Any]) -> None:
    record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")

  def advance(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()


class NullMetricsWriter:
  """What the processes other than 0 of a multi-host job get: they train, process 0 reports."""

  def write(self, step: int, values: dict[str, Any]) -> None:
    pass

  def advance(self, steps: int = 1) -> None:
    pass

  def close(self) -> None:
    pass


def _plain(v):
  v = np.asarray(v)
  if v.ndim == 0:
    return v.item()
  return v.tolist()

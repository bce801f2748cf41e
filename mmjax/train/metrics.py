"""Metrics: `metrics.jsonl`, TensorBoard events, a progress bar, and model FLOPs.

Model FLOPs are counted analytically, as MaxText does (XLA's cost analysis counts a scanned layer
stack once): 6 * parameters per trained token for the decoder, per patch for the vision encoder
and per image token for the connector, plus attention (12 * layers * width * context per token).
"""

import json
import os
import sys
import time
from typing import Any

import numpy as np


def count_params(tree: Any) -> int:
  import jax

  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def flops_per_step(config, params: dict, batch_rows: int, seq_len: int, images: int) -> float:
  """Training FLOPs of one step of a LLaVA-style model (forward + backward)."""
  dec = dict(params.get("decoder", {}))
  dec_params = count_params({k: v for k, v in dec.items() if k != "embed"})
  tokens = batch_rows * seq_len
  d = config.decoder
  flops = 6 * dec_params * tokens + 12 * d.num_layers * d.num_heads * d.head_dim * seq_len * tokens
  if "encoder" in params and images:
    v = config.vision
    patches = images * v.num_positions
    flops += 6 * count_params(params["encoder"]) * patches
    flops += 12 * v.num_layers * v.hidden_size * v.num_positions * patches
  if "connector" in params and images:
    flops += 6 * count_params(params["connector"]) * images * config.tokens_per_image
  return float(flops)


class MetricsWriter:
  """One JSON object per logged step; TensorBoard scalars; a progress bar on a terminal."""

  def __init__(self, workdir: str, total_steps: int, start_step: int):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # tensorboardX is a dependency; keep training if it is broken
      self._tb = None
    self._bar = None
    if sys.stderr.isatty():
      from tqdm import tqdm

      self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                       dynamic_ncols=True)
    self._last = time.perf_counter()

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


def _plain(v):
  v = np.asarray(v)
  if v.ndim == 0:
    return v.item()
  return v.tolist()

"""Metrics: `metrics.jsonl`, TensorBoard events, a progress bar, and model FLOPs.

Model FLOPs are counted analytically, as MaxText does (XLA's cost analysis counts a scanned layer
stack once): per parameter, 2 FLOPs forward, 2 for activation gradients and 2 for weight
gradients (6 for a trained part; 4 or 2 for a frozen one, see `_flops_per_param`), counted per
token for the decoder, per patch for the vision encoder and per image token for the connector,
plus attention (2 * layers * width * context per token and pass, causal masking not discounted).
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


# Data flows encoder -> connector -> decoder; a frozen part still runs its backward pass (for
# activation gradients) when a part before it trains.
_CHAIN = ("encoder", "connector", "decoder")


def _flops_per_param(name: str, trainable) -> int:
  """Forward 2 + activation gradients 2 + weight gradients 2 per parameter and position."""
  if name in trainable:
    return 6
  upstream = _CHAIN[:_CHAIN.index(name)] if name in _CHAIN else ()
  return 4 if any(p in trainable for p in upstream) else 2


def flops_per_step(config, params: dict, batch_rows: int, seq_len: int, images: int,
                   trainable=_CHAIN, image_grid_thw=None,
                   attention=("decoder", "encoder")) -> float:
  """Model FLOPs of one training step of a LLaVA-style model (forward + backward).

  Native-resolution encoders (Qwen-VL) give the batch's `image_grid_thw [M, 3]` (zero rows for
  unused slots) instead of a fixed patch count per image. `attention` names the stacks whose
  attention products (QK^T, AV) are counted.
  """
  if image_grid_thw is not None:
    return _native_resolution_flops(config, params, batch_rows, seq_len, image_grid_thw, trainable,
                                    attention)
  dec = dict(params.get("decoder", {}))
  dec_params = count_params({k: v for k, v in dec.items() if k != "embed"})
  tokens = batch_rows * seq_len
  d = config.decoder
  per = {name: _flops_per_param(name, trainable) for name in _CHAIN}
  dec_attention = 2 * d.num_layers * d.num_heads * d.head_dim * seq_len * tokens  # QK^T and AV
  flops = per["decoder"] * (dec_params * tokens + dec_attention * ("decoder" in attention))
  if "encoder" in params and images:
    v = config.vision
    patches = images * v.num_positions
    vit_attention = 2 * v.num_layers * v.hidden_size * v.num_positions * patches
    vit_attention *= "encoder" in attention
    flops += per["encoder"] * (count_params(params["encoder"]) * patches + vit_attention)
  if "connector" in params and images:
    flops += per["connector"] * count_params(params["connector"]) * images * config.tokens_per_image
  return float(flops)


def _native_resolution_flops(config, params, batch_rows, seq_len, grid, trainable,
                             attention) -> float:
  """Qwen-VL: the decoder as above; the ViT per patch, attending within its frame, and its
  merger (and DeepStack mergers) per merged token."""
  text = flops_per_step(config, {"decoder": params["decoder"]}, batch_rows, seq_len, 0, trainable,
                        attention=attention)
  grid = np.asarray(grid, np.int64).reshape(-1, 3)
  frames, per_frame = grid[:, 0], grid[:, 1] * grid[:, 2]
  patches = int(np.sum(frames * per_frame))
  if "encoder" not in params or not patches:
    return text
  encoder = dict(params["encoder"])
  mergers = {k: encoder.pop(k) for k in ("merger", "deepstack") if k in encoder}
  v = config.vision
  vit_attention = 2 * v.num_layers * v.hidden_size * int(np.sum(frames * per_frame**2))
  vit_attention *= "encoder" in attention
  merged = patches // config.merge_size**2
  per_patch = count_params(encoder) * patches + vit_attention + count_params(mergers) * merged
  return text + _flops_per_param("encoder", trainable) * per_patch


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

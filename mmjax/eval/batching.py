"""Prompts of one row each -> one left-padded batch, with shapes rounded so that the compiled
prefill and decode are reused from batch to batch.

A prompt is what `PromptBuilder(prompt, images)` returns: `input_ids [1, T]` and its pixels:
None, an NHWC array `[I, H, W, C]` (images stacked in row order), or a mapping of arrays (the
Qwen-VL processor's `pixel_values`, `image_grid_thw`, ...). Mapping entries that run along the
row's tokens (`[1, T, ...]`, e.g. `mm_token_type_ids`) are left padded like the ids; the others
are stacked along their first axis, in row order, as a processor batches them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

LENGTH_MULTIPLE = 16  # prompt lengths are rounded up to this: one compile per 16 tokens


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def left_pad(rows: Sequence[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """1-D id rows -> `ids [B, length]` padded on the left with `pad_id`, `mask [B, length]`."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for r, row in enumerate(rows):
    ids[r, length - len(row):] = row
    mask[r, length - len(row):] = 1
  return ids, mask


def _stack_pixels(pixels: Sequence[Any], lengths: Sequence[int], length: int):
  present = [p for p in pixels if p is not None]
  if not present:
    return None
  if not isinstance(present[0], dict):
    return np.concatenate([np.asarray(p) for p in present])
  out = {}
  for key in present[0]:
    values = [(p[key], t) for p, t in zip(pixels, lengths) if p is not None and key in p]
    if any(v is None for v, _ in values):
      continue
    arrays = [(np.asarray(v), t) for v, t in values]
    if all(a.ndim >= 2 and a.shape[:2] == (1, t) for a, t in arrays):  # along the tokens
      padded = [np.pad(a, [(0, 0), (length - t, 0)] + [(0, 0)] * (a.ndim - 2)) for a, t in arrays]
      out[key] = np.concatenate(padded)
    else:
      out[key] = np.concatenate([a for a, _ in arrays])
  return out


def collate(prompts: Sequence[tuple[np.ndarray, Any]], pad_id: int, rows: int | None = None,
            length_multiple: int = LENGTH_MULTIPLE):
  """`[(input_ids [1, T_i], pixels_i)]` -> `(ids [B, T], mask [B, T], pixels)`.

  `rows` pads the batch to that many rows by repeating the last prompt (its answers are
  dropped by the caller), so that a short last batch compiles nothing new.
  """
  prompts = list(prompts)
  if rows is not None and len(prompts) < rows:
    prompts += [prompts[-1]] * (rows - len(prompts))
  lengths = [int(np.asarray(ids).shape[-1]) for ids, _ in prompts]
  length = round_up(max(lengths), length_multiple)
  ids, mask = left_pad([np.asarray(ids).reshape(-1) for ids, _ in prompts], length, pad_id)
  return ids, mask, _stack_pixels([p for _, p in prompts], lengths, length)


def until_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
  """Generated ids up to (not including) the first stop id."""
  out = []
  for token in tokens:
    if int(token) in stop_ids:
      break
    out.append(int(token))
  return out

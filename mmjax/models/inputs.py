"""Arrays every family reads the same way: text inputs of the processor contract, the text part
of a training batch, NCHW images."""

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from mmjax.nn.masks import positions_from_attention_mask


def text_inputs(inputs: Mapping[str, np.ndarray]):
  """`input_ids [B, T]` int32, `attention_mask [B, T]` (ones when absent) and `position_ids`
  (from the attention mask when absent, as transformers' generate computes them)."""
  if "input_ids" not in inputs:
    raise KeyError(f"inputs lack 'input_ids' (have: {sorted(inputs)})")
  input_ids = jnp.asarray(inputs["input_ids"], jnp.int32)
  mask = inputs.get("attention_mask")
  mask = jnp.ones_like(input_ids) if mask is None else jnp.asarray(mask, jnp.int32)
  positions = inputs.get("position_ids")
  positions = positions_from_attention_mask(mask) if positions is None else jnp.asarray(positions)
  return input_ids, mask, positions


def text_train_batch(data: Mapping[str, Any], sds) -> dict:
  """The text arrays of a global training batch (schema: `mmjax.data.pipeline`) as structs."""
  b, t = int(data["batch_size"]), int(data["max_length"])
  return {"input_ids": sds((b, t), jnp.int32), "labels": sds((b, t), jnp.int32),
          "loss_mask": sds((b, t), jnp.float32), "attention_mask": sds((b, t), jnp.int32),
          "segment_ids": sds((b, t), jnp.int32), "positions": sds((b, t), jnp.int32)}


def nchw_to_nhwc(pixels, name: str = "pixel_values") -> np.ndarray:
  """HF's `[I, C, H, W]` images -> mmjax's `[I, H, W, C]` float32."""
  pixels = np.asarray(pixels)
  if pixels.ndim != 4:
    raise ValueError(f"{name} must be [images, channels, height, width], got {pixels.shape}")
  return np.transpose(pixels, (0, 2, 3, 1)).astype(np.float32)

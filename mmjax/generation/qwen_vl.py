"""Generation adapter of Qwen2-VL / Qwen2.5-VL / Qwen3-VL (see `mmjax.generation.adapters`)."""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn

from mmjax.decoders.llama import init_cache
from mmjax.generation.adapters import DecodeState, last_logits, text_step
from mmjax.models import qwen_vl


@dataclasses.dataclass(frozen=True)
class QwenVLFusion:
  """Packed images and videos, M-RoPE, DeepStack.

  `pixels` is a mapping of the processor's arrays (`qwen_vl.PROCESSOR_KEYS`: `pixel_values`,
  `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, `mm_token_type_ids`,
  `second_per_grid_ts`). Prompt positions are `[3, B, T]` from `get_rope_index` as transformers
  computes them; the k-th new token of a row takes, on each axis, the prompt's last position
  + 1 + k, as transformers' `generate` extends `position_ids`. (That is `rope_deltas`' row
  maximum + 1 + k except where a video's temporal positions run past the text after it:
  Qwen2.5-VL videos with a long `second_per_grid_ts`, long Qwen2-VL videos of small frames.)
  Visual features (and Qwen3-VL's DeepStack additions) enter in the prefill only.
  """

  module: nn.Module
  config: qwen_vl.QwenVLConfig

  def prepare_inputs(self, input_ids, mask, pixels: Mapping[str, Any] | None, positions):
    pixels = dict(pixels or {})
    unknown = set(pixels) - set(qwen_vl.PROCESSOR_KEYS)
    if unknown:
      raise ValueError(f"unknown Qwen-VL inputs {sorted(unknown)}; expected some of "
                       f"{qwen_vl.PROCESSOR_KEYS}")
    inputs = {**pixels, "input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    _, _, images, videos, positions = qwen_vl.processor_inputs(self.config, inputs)
    return {"images": images, "videos": videos}, positions

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.config.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """`positions [3, B, T]`; `pixels` as `prepare_inputs` returns them."""

    def run(m, input_ids, images, videos, positions, mask, cache):
      x, layer_inputs = m.embed(input_ids, images, videos)  # [B, T, D], [K, B, T, D] | None
      return last_logits(m.decoder, m.decoder(x, positions, mask, None, cache, 0,
                                              layer_inputs=layer_inputs))

    logits, cache = self.module.apply({"params": params}, input_ids, pixels["images"],
                                      pixels["videos"], positions, mask, state["cache"],
                                      method=run)
    return logits, {**state, "cache": cache}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """`tokens [B, 1]`, `positions [3, B, 1]`, written at cache slot `index`."""
    return text_step(self.module, params, tokens, positions, mask, state, index)

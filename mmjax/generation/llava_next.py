"""Generation of LLaVA-NeXT: the adapter (see `mmjax.generation.adapters`)."""

import dataclasses

import flax.linen as nn

from mmjax.decoders.llama import init_cache
from mmjax.generation.adapters import DecodeState, checked_positions, last_logits, text_step
from mmjax.models import llava_next


@dataclasses.dataclass(frozen=True)
class AnyResFusion:
  """Image features (base view, unpadded grid rows each ended by `image_newline`) replace the
  placeholder embeddings in the prefill; new tokens are text.

  `pixels` is a mapping of LlavaNextProcessor's arrays (`pixel_values [I, P, C, H, W]`,
  `image_sizes [I, 2]`), or None for text-only prompts.
  """

  module: nn.Module
  config: llava_next.LlavaNextConfig

  def prepare_inputs(self, input_ids, mask, pixels, positions):
    """The model's images (`llava_next.anyres_images`: tiles NHWC and their layout) and
    `positions [B, T]` (or None); raises `PlaceholderMismatchError` when the placeholders and
    the images' features disagree."""
    pixels = dict(pixels or {})
    unknown = set(pixels) - set(llava_next.PROCESSOR_KEYS)
    if unknown:
      raise ValueError(f"unknown LLaVA-NeXT inputs {sorted(unknown)}; expected some of "
                       f"{llava_next.PROCESSOR_KEYS}")
    images = llava_next.anyres_images(self.config, pixels.get("pixel_values"),
                                      pixels.get("image_sizes"))
    llava_next.check_image_placeholders(self.config, input_ids, images)
    return images, checked_positions(positions, input_ids)

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.config.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """`pixels` as `prepare_inputs` returns them -> last logits `[B, V]`, new state."""

    def run(m, input_ids, images, positions, mask, cache):
      x = m.embed(input_ids, images)  # [B, T, D]
      return last_logits(m.decoder, m.decoder(x, positions, mask, None, cache, 0))

    logits, cache = self.module.apply({"params": params}, input_ids, pixels, positions, mask,
                                      state["cache"], method=run)
    return logits, {**state, "cache": cache}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """One token per row: `tokens [B, 1]`, `positions [B, 1]`, written at cache slot `index`."""
    return text_step(self.module, params, tokens, positions, mask, state, index)

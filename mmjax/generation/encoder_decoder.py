"""The generation adapter of encoder-decoder language models (T5 / Flan-T5, alone or as a VLM's
language model): the prompt (with any image features merged into its embeddings) is encoded
once in the prefill, whose decoder call starts from the decoder start token and fills the
cross-attention keys/values into the state; each step then decodes one token against them.

The loop's positions and its prompt-length cache index are decoder-only notions: the decoder's
own slot counter travels in the state (`index`), its cache holds `max_new_tokens` slots (the
start token, then every generated token but the last: `cache_length`), and the prompt may be
padded on either side (`needs_left_padding`), as T5 tokenizers pad on the right.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from mmjax.decoders.t5 import init_cache
from mmjax.decoders.t5_config import T5Config
from mmjax.generation.adapters import DecodeState


@dataclasses.dataclass(frozen=True)
class EncoderDecoderFusion:
  """`module` has `encoder_inputs(input_ids, images) -> [B, T, D]` (token embeddings with the
  images' features merged in) and its language model under `decoder`
  (`mmjax.decoders.t5.T5`); `images(input_ids, pixels)` checks a prompt's images against its
  placeholders on the host and returns what `encoder_inputs` takes."""

  module: nn.Module
  config: Any
  lm: T5Config
  images: Callable[[Any, Any], Any]

  needs_left_padding = False
  layer_segments = ()  # no per-layer views: the loop keeps the scanned stacks

  def cache_length(self, prompt_length: int, new_tokens: int) -> int:
    return new_tokens

  def prepare_inputs(self, input_ids, mask, pixels, positions):
    return self.images(input_ids, pixels), None

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.lm, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """Encodes `input_ids [B, T]` under `mask[:, :T]` (the loop's mask runs on past the prompt)
    and decodes the start token: logits `[B, V]` and the state with the cross keys/values."""
    b, t = input_ids.shape
    encoder_mask = mask[:, :t]
    start = jnp.full((b, 1), self.lm.decoder_start_token_id, jnp.int32)

    def run(m, input_ids, images, encoder_mask, cache):
      states = m.decoder.encode(m.encoder_inputs(input_ids, images), encoder_mask)
      out = m.decoder.decode(start, states, encoder_mask, cache=cache, cache_index=0)
      return out.logits[:, -1], out.cache

    logits, cache = self.module.apply({"params": params}, input_ids, pixels, encoder_mask,
                                      state["cache"], method=run)
    return logits, {"cache": cache, "encoder_mask": encoder_mask, "index": jnp.int32(1)}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """`tokens [B, 1]` at the decoder's own slot `state['index']` (the loop's index and
    positions count the prompt, which the decoder does not see)."""

    def run(m, tokens, encoder_mask, cache, slot):
      out = m.decoder.decode(tokens, None, encoder_mask, cache=cache, cache_index=slot)
      return out.logits[:, -1], out.cache

    logits, cache = self.module.apply({"params": params}, tokens, state["encoder_mask"],
                                      state["cache"], state["index"], method=run)
    return logits, {**state, "cache": cache, "index": state["index"] + 1}

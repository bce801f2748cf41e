"""Generation of the cross-attention families (Llama 3.2 Vision, IDEFICS): the adapter's decode
state and steps (see `mmjax.generation.adapters`), shared; each family checks its own inputs.

The prefill runs the vision tower once and every cross-attention layer keeps its images'
keys/values in the decode state (the decoder's cache); each new token sees the images the last
prompt token sees, as transformers' `generate` repeats the last row of the family's mask
(`cross_attention_mask`, `image_attention_mask`). Without images (`pixels` None) the
cross-attention layers are skipped throughout.

The module has a `decoder`, `image_states(images) -> [B, S, Dv]` and `cross_inputs(input_ids,
images, states) -> mmjax.decoders.cross.CrossInputs`.
"""

import dataclasses
from typing import Any

import flax.linen as nn

from mmjax.decoders.cross import CrossInputs
from mmjax.decoders.llama import init_cache
from mmjax.generation.adapters import DecodeState, last_logits


@dataclasses.dataclass(frozen=True)
class CrossAttentionAdapter:
  """A subclass defines `prepare_inputs(input_ids, mask, pixels, positions)`."""

  module: nn.Module
  config: Any  # the family config; its `decoder` is the DecoderConfig

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.config.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """Logits of the last prompt token `[B, V]`; the state gains the images' keys/values (in
    the cache) and the last token's cross-attention mask (`cross`)."""

    def run(m, input_ids, images, positions, mask, cache):
      cross = None
      if images is not None:
        cross = m.cross_inputs(input_ids, images, m.image_states(images))
      out = m.decoder(m.decoder.embed(input_ids), positions, mask, None, cache, 0, cross=cross)
      return last_logits(m.decoder, out), cross

    (logits, cache), cross = self.module.apply({"params": params}, input_ids, pixels, positions,
                                               mask, state["cache"], method=run)
    state = {**state, "cache": cache}
    if cross is not None:  # [B, 1, 1, S] and [B, 1]: what every new token sees
      state["cross"] = CrossInputs(None, cross.mask[:, :, -1:], cross.row_mask[:, -1:])
    return logits, state

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """`tokens [B, 1]`, `positions [B, 1]`, written at cache slot `index`."""

    def run(m, tokens, positions, mask, cache, index, cross):
      return m.decoder(m.decoder.embed(tokens), positions, mask, None, cache, index, cross=cross)

    out = self.module.apply({"params": params}, tokens, positions, mask, state["cache"], index,
                            state.get("cross"), method=run)
    return out.logits[:, -1], {**state, "cache": out.cache}

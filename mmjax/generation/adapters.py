"""How a model family runs under generation: check its inputs, allocate its decode state,
prefill, step.

The decode loop only sees these four methods and treats the state as an opaque pytree, so a
family with cross-attention (Flamingo, Llama 3.2 Vision) slots in by keeping its image keys/values
in the state next to the self-attention cache and computing them once in `prefill`. A family
returns its adapter from `Family.generation_adapter`.

`prepare_inputs(input_ids, mask, pixels, positions)` runs on the host before anything is
compiled: it checks the prompt's images against its placeholders and returns the `(pixels,
positions)` the jitted `prefill` takes. Positions are `[B, T]` (None: `cumsum(mask) - 1` in the
loop) or, for M-RoPE families, `[3, B, T]`; `step` gets `[B, 1]` or `[3, B, 1]`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import numpy as np

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import init_cache
from mmjax.models.fusion import check_placeholders

DecodeState = dict[str, Any]  # {'cache': {'k', 'v': [L, B, S, K, H]}, + family extras}


@dataclasses.dataclass(frozen=True)
class EmbeddingFusion:
  """Families whose images replace placeholder-token embeddings (LLaVA, InternVL), and text-only
  LMs.

  `module` has a `decoder` (`mmjax.decoders.llama.Decoder`) and, when `has_images`, an
  `embed(input_ids, pixels)` that merges image features into the token embeddings.
  """

  module: nn.Module
  config: Any  # the family config (LlavaConfig, InternVLConfig, DecoderConfig)
  decoder: DecoderConfig
  has_images: bool

  def prepare_inputs(self, input_ids, mask, pixels, positions):
    """NHWC `pixels [I, H, W, C]` float32 and `positions [B, T]` (or None); raises
    `PlaceholderMismatchError` when placeholders and images disagree."""
    cfg = self.config
    if pixels is not None:
      pixels = np.asarray(pixels, np.float32)
      if pixels.ndim != 4:
        raise ValueError(f"pixels must be [images, height, width, channels], got {pixels.shape}")
    if self.has_images:
      images = 0 if pixels is None else pixels.shape[0]
      check_placeholders(input_ids, cfg.image_token_id, images * cfg.tokens_per_image)
    elif pixels is not None and pixels.shape[0]:
      raise ValueError(f"this {self.decoder.model_type} checkpoint is text-only but got "
                       f"{pixels.shape[0]} images")
    return pixels, checked_positions(positions, input_ids)

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """`input_ids [B, T]`, `pixels [I, H, W, C] | None`, `positions [B, T]`, `mask [B, S]`
    (over the whole cache) -> float32 logits of the last prompt token `[B, V]`, new state."""
    has_images = self.has_images

    def run(m, input_ids, pixels, positions, mask, cache):
      x = m.embed(input_ids, pixels) if has_images else m.decoder.embed(input_ids)  # [B, T, D]
      return last_logits(m.decoder, m.decoder(x, positions, mask, None, cache, 0))

    logits, cache = self.module.apply({"params": params}, input_ids, pixels, positions, mask,
                                      state["cache"], method=run)
    return logits, {**state, "cache": cache}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """One token per row: `tokens [B, 1]`, `positions [B, 1]`, written at cache slot `index`.

    Generated ids are embedded as text even when one equals the image placeholder (as in
    transformers, where pixels only enter the first forward pass).
    """
    return text_step(self.module, params, tokens, positions, mask, state, index)


@dataclasses.dataclass(frozen=True)
class HostImagesFusion:
  """Families whose images the host lays out from the processor's arrays (LLaVA-NeXT's tiles,
  Pixtral's packed patches; `mmjax.models.host_images.HostImagesFamily`): the family turns its
  `processor_keys` arrays into the module's images and checks them against the placeholders;
  the module's `embed(input_ids, images)` merges their features in the prefill; new tokens are
  text.
  """

  module: nn.Module
  config: Any
  family: Any  # a HostImagesFamily

  def prepare_inputs(self, input_ids, mask, pixels, positions):
    """`pixels`: a mapping of the processor's arrays, or None for text-only prompts."""
    pixels = dict(pixels or {})
    keys = self.family.processor_keys
    unknown = set(pixels) - set(keys)
    if unknown:
      raise ValueError(f"unknown inputs {sorted(unknown)} for a {self.family.name!r} model; "
                       f"expected some of {keys}")
    images = self.family.images_from_processor(self.config, pixels)
    self.family.check_image_placeholders(self.config, input_ids, images)
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


def checked_positions(positions, input_ids):
  """`positions [B, T]` as int32, or None (the loop computes them from the mask)."""
  if positions is None:
    return None
  positions = np.asarray(positions, np.int32)
  if positions.shape != input_ids.shape:
    raise ValueError(f"positions {positions.shape} do not match input_ids {input_ids.shape}")
  return positions


def last_logits(decoder, out) -> tuple:
  """The prompt's last position's float32 logits `[B, V]` and the cache, from a prefill's
  `DecoderOutput` (inside `apply`): only the next token is sampled, so the LM head runs on that
  position alone, as transformers' `generate` does (XLA drops the unused `[B, T, V]` logits)."""
  return decoder.logits(out.hidden[:, -1:])[:, 0], out.cache  # the head takes [B, T, D]


def text_step(module, params, tokens, positions, mask, state: DecodeState, index):
  """One decode step of a family whose module has a `decoder`: new tokens embedded as text."""

  def run(m, tokens, positions, mask, cache, index):
    return m.decoder(m.decoder.embed(tokens), positions, mask, None, cache, index)

  out = module.apply({"params": params}, tokens, positions, mask, state["cache"], index,
                     method=run)
  return out.logits[:, -1], {**state, "cache": out.cache}

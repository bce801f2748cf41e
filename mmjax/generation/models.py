"""How a model family runs under generation: check its inputs, allocate its decode state,
prefill, step.

The decode loop only sees these four methods and treats the state as an opaque pytree, so a
family with cross-attention (Flamingo, Llama 3.2 Vision) slots in by keeping its image keys/values
in the state next to the self-attention cache and computing them once in `prefill`.

`prepare_inputs(input_ids, mask, pixels, positions)` runs on the host before anything is
compiled: it checks the prompt's images against its placeholders and returns the `(pixels,
positions)` the jitted `prefill` takes. Positions are `[B, T]` (None: `cumsum(mask) - 1` in the
loop) or, for M-RoPE families, `[3, B, T]`; `step` gets `[B, 1]` or `[3, B, 1]`.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import init_cache
from mmjax.models import qwen_vl
from mmjax.models.fusion import check_placeholders

DecodeState = dict[str, Any]  # {'cache': {'k', 'v': [L, B, S, K, H]}, + family extras}


@dataclasses.dataclass(frozen=True)
class EmbeddingFusion:
  """Families whose images replace placeholder-token embeddings (LLaVA), and text-only LMs.

  `module` has a `decoder` (`mmjax.decoders.llama.Decoder`) and, when `has_images`, an
  `embed(input_ids, pixels)` that merges image features into the token embeddings.
  """

  module: nn.Module
  config: Any  # the family config (LlavaConfig, DecoderConfig)
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
    if positions is not None:
      positions = np.asarray(positions, np.int32)
      if positions.shape != input_ids.shape:
        raise ValueError(f"positions {positions.shape} do not match input_ids {input_ids.shape}")
    return pixels, positions

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """`input_ids [B, T]`, `pixels [I, H, W, C] | None`, `positions [B, T]`, `mask [B, S]`
    (over the whole cache) -> float32 logits of the last prompt token `[B, V]`, new state."""
    has_images = self.has_images

    def run(m, input_ids, pixels, positions, mask, cache):
      x = m.embed(input_ids, pixels) if has_images else m.decoder.embed(input_ids)  # [B, T, D]
      return _last_logits(m.decoder, *m.decoder(x, positions, mask, None, cache, 0,
                                                hidden_only=True))

    logits, cache = self.module.apply({"params": params}, input_ids, pixels, positions, mask,
                                      state["cache"], method=run)
    return logits, {**state, "cache": cache}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """One token per row: `tokens [B, 1]`, `positions [B, 1]`, written at cache slot `index`.

    Generated ids are embedded as text even when one equals the image placeholder (as in
    transformers, where pixels only enter the first forward pass).
    """
    return _text_step(self.module, params, tokens, positions, mask, state, index)


def _last_logits(decoder, hidden, cache):
  """The prompt's last position's logits `[B, V]` from the decoder's output `[B, T, D]`: only the
  next token is sampled, so the LM head runs on one position (as transformers' `generate` does),
  not all T."""
  return decoder.logits(hidden[:, -1:])[:, 0], cache


def _text_step(module, params, tokens, positions, mask, state: DecodeState, index):
  """One decode step of a family whose module has a `decoder`: new tokens embedded as text."""

  def run(m, tokens, positions, mask, cache, index):
    return m.decoder(m.decoder.embed(tokens), positions, mask, None, cache, index)

  logits, cache = module.apply({"params": params}, tokens, positions, mask, state["cache"], index,
                               method=run)
  return logits[:, -1], {**state, "cache": cache}


def _embedding_fusion(family, config) -> EmbeddingFusion:
  decoder = getattr(config, "decoder", config)
  return EmbeddingFusion(family.build(config), config, decoder,
                         has_images=family.name != "causal_lm")


@dataclasses.dataclass(frozen=True)
class QwenVLFusion:
  """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: packed images and videos, M-RoPE, DeepStack.

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
      return _last_logits(m.decoder, *m.decoder(x, positions, mask, None, cache, 0,
                                                layer_inputs=layer_inputs, hidden_only=True))

    logits, cache = self.module.apply({"params": params}, input_ids, pixels["images"],
                                      pixels["videos"], positions, mask, state["cache"], method=run)
    return logits, {**state, "cache": cache}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """`tokens [B, 1]`, `positions [3, B, 1]`, written at cache slot `index`."""
    return _text_step(self.module, params, tokens, positions, mask, state, index)


def _qwen_vl_fusion(family, config) -> QwenVLFusion:
  return QwenVLFusion(family.build(config), config)


# registry family name -> builder of its generation adapter
ADAPTERS = {"llava": _embedding_fusion, "causal_lm": _embedding_fusion,
            "internvl": _embedding_fusion,
            **{name: _qwen_vl_fusion for name in qwen_vl.MODEL_TYPES}}


def adapter_for(family, config):
  if family.name not in ADAPTERS:
    raise ValueError(f"generation is not supported for {family.name!r} checkpoints; "
                     f"supported families: {sorted(ADAPTERS)}")
  return ADAPTERS[family.name](family, config)

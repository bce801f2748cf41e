"""How a model family runs under generation: allocate its decode state, prefill, step.

The decode loop only sees these three methods and treats the state as an opaque pytree, so a
family with cross-attention (Flamingo, Llama 3.2 Vision) slots in by keeping its image keys/values
in the state next to the self-attention cache and computing them once in `prefill`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import init_cache
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

  def check_inputs(self, input_ids, pixels) -> None:
    """Raises `PlaceholderMismatchError` when placeholders and images disagree (before jit)."""
    cfg = self.config
    if self.has_images:
      images = 0 if pixels is None else pixels.shape[0]
      check_placeholders(input_ids, cfg.image_token_id, images * cfg.tokens_per_image)
    elif pixels is not None and pixels.shape[0]:
      raise ValueError(f"this {self.decoder.model_type} checkpoint is text-only but got "
                       f"{pixels.shape[0]} images")

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """`input_ids [B, T]`, `pixels [I, H, W, C] | None`, `positions [B, T]`, `mask [B, S]`
    (over the whole cache) -> float32 logits of the last prompt token `[B, V]`, new state."""
    has_images = self.has_images

    def run(m, input_ids, pixels, positions, mask, cache):
      x = m.embed(input_ids, pixels) if has_images else m.decoder.embed(input_ids)  # [B, T, D]
      return m.decoder(x, positions, mask, None, cache, 0)

    logits, cache = self.module.apply({"params": params}, input_ids, pixels, positions, mask,
                                      state["cache"], method=run)
    return logits[:, -1], {**state, "cache": cache}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """One token per row: `tokens [B, 1]`, `positions [B, 1]`, written at cache slot `index`.

    Generated ids are embedded as text even when one equals the image placeholder (as in
    transformers, where pixels only enter the first forward pass).
    """

    def run(m, tokens, positions, mask, cache, index):
      return m.decoder(m.decoder.embed(tokens), positions, mask, None, cache, index)

    logits, cache = self.module.apply({"params": params}, tokens, positions, mask, state["cache"],
                                      index, method=run)
    return logits[:, -1], {**state, "cache": cache}


def _embedding_fusion(family, config) -> EmbeddingFusion:
  decoder = getattr(config, "decoder", config)
  return EmbeddingFusion(family.build(config), config, decoder,
                         has_images=family.name != "causal_lm")


# registry family name -> builder of its generation adapter
ADAPTERS = {"llava": _embedding_fusion, "causal_lm": _embedding_fusion,
            "internvl": _embedding_fusion}


def adapter_for(family, config):
  if family.name not in ADAPTERS:
    raise ValueError(f"generation is not supported for {family.name!r} checkpoints; "
                     f"supported families: {sorted(ADAPTERS)}")
  return ADAPTERS[family.name](family, config)

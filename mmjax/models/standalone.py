"""Single-tower models: a causal LM, a vision encoder. Same parameter subtrees as in a VLM."""

import flax.linen as nn
import jax

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import Decoder
from mmjax.encoders.vit import VisionConfig, VisionTransformer


class CausalLM(nn.Module):
  config: DecoderConfig

  def setup(self):
    self.decoder = Decoder(self.config)

  def __call__(self, input_ids, positions, attention_mask=None, segment_ids=None, cache=None,
               cache_index=0, hidden_only=False, head_loss=None):
    """`input_ids [B, T]` -> float32 logits `[B, T, V]` (hidden states with `hidden_only`,
    `head_loss`'s result when given: `Decoder`), updated cache."""
    return self.decoder(self.decoder.embed(input_ids), positions, attention_mask, segment_ids,
                        cache, cache_index, hidden_only=hidden_only, head_loss=head_loss)


class VisionModel(nn.Module):
  config: VisionConfig

  def setup(self):
    self.encoder = VisionTransformer(self.config)

  def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
    return self.encoder(pixels)

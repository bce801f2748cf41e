"""BLIP-2 (transformers `blip-2`, `Blip2ForConditionalGeneration`): an EVA vision tower, a Q-Former
whose learned queries read its features, a `language_projection` Linear, and an OPT or
Llama-family decoder.

As in transformers 5, the projected query outputs replace the embeddings of the
`num_query_tokens` image tokens (`image_token_index`) that `Blip2Processor` puts in front of each
prompt (before its BOS, and before the left padding of a padded batch), in row-major order: one
image per row, embedding fusion with an unchanged decoder.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.qformer import QFormer
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.vit import VisionTransformer
from mmjax.models.blip2_config import Blip2Config
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.inputs import nchw_to_nhwc, text_inputs
from mmjax.models.tiled_family import TiledImageFamily
from mmjax.nn.linear import Einsum
from mmjax.nn.multihead import KVCache


class Blip2Connector(nn.Module):
  """Q-Former, then `language_projection`: image features `[I, S, E]` -> `[I, Q, D_text]`."""

  config: Blip2Config

  @nn.compact
  def __call__(self, features: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    queries = QFormer(cfg.qformer, name="qformer")(features,
                                                   deterministic=deterministic).queries
    d, q = cfg.decoder.hidden_size, cfg.qformer.hidden_size
    return Einsum("BQI,OI->BQO", (d, q), ("embed", "vit_embed"), bias_shape=(d,),
                  bias_axes=("embed",), dtype=jnp.dtype(cfg.decoder.dtype),
                  param_dtype=jnp.dtype(cfg.decoder.param_dtype), name="projection")(queries)


class Blip2(nn.Module):
  config: Blip2Config

  def setup(self):
    self.encoder = VisionTransformer(self.config.vision)
    self.connector = Blip2Connector(self.config)
    self.decoder = Decoder(self.config.decoder)

  def image_features(self, pixels: jax.Array) -> jax.Array:
    """`pixels [I, H, W, C]` -> `[I, Q, D_text]` (the post-normed tower output, every token)."""
    return self.connector(self.encoder(pixels)["last_hidden_state"])

  def embed(self, input_ids: jax.Array, pixels: jax.Array | None,
            image_valid: jax.Array | None = None) -> jax.Array:
    """Token embeddings `[B, T, D]` with the images' query tokens in the image-token slots;
    `image_valid [I]` marks real images among padding slots (training batches)."""
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)
    is_placeholder = input_ids == cfg.image_token_id
    if pixels is None or pixels.shape[0] == 0:
      check_placeholders(input_ids, cfg.image_token_id, 0)
      return embeddings
    features = self.image_features(pixels)  # [I, Q, D]
    q = features.shape[1]
    features = features.reshape(-1, features.shape[-1])
    valid = None
    if image_valid is not None:
      valid = jnp.repeat(image_valid.astype(bool), q)
      if not isinstance(image_valid, jax.core.Tracer):
        check_placeholders(input_ids, cfg.image_token_id, int(valid.sum()))
    else:
      check_placeholders(input_ids, cfg.image_token_id, features.shape[0])
    return merge_image_features(embeddings, is_placeholder, features, valid)

  def __call__(
      self,
      input_ids: jax.Array,
      pixels: jax.Array | None,
      positions: jax.Array,
      attention_mask: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int = 0,
      image_valid: jax.Array | None = None,
      head_loss: HeadLoss | None = None,
  ) -> DecoderOutput:
    """`input_ids [B, T]`, `pixels [I, H, W, C]` (the batch's images in row order) -> the
    decoder's output (float32 logits `[B, T, V]`, cache, hidden states)."""
    embeddings = self.embed(input_ids, pixels, image_valid)
    return self.decoder(embeddings, positions, attention_mask, segment_ids, cache, cache_index,
                        head_loss=head_loss)


@functools.lru_cache(maxsize=4)
def _compiled_apply(config: Blip2Config):
  """The model's jitted `apply`, one per config (frozen, hashable): the tower, Q-Former and
  decoder as one program (op by op they run many times slower on CPU)."""
  return jax.jit(Blip2(config).apply)


class Blip2Family(TiledImageFamily):
  """transformers' `blip-2` checkpoints with a decoder-only language model (inference: logits,
  generation)."""

  name = "blip-2"
  hf_model_types = ("blip-2",)
  config_cls = Blip2Config
  module_cls = Blip2
  table = "blip2"

  def config_from_hf(self, hf_config, **execution):
    return Blip2Config.from_hf(hf_config, **execution)

  def forward_from_hf_inputs(self, config, params, inputs):
    """`input_ids [B, T]`, `attention_mask` (optional), `position_ids` (optional) and
    `pixel_values [I, C, H, W]` as `Blip2Processor` makes them -> float32 logits `[B, T, V]`;
    placeholders and images are checked on the host first (jit cannot count)."""
    input_ids, mask, positions = text_inputs(inputs)
    pixels = inputs.get("pixel_values")
    pixels = None if pixels is None else nchw_to_nhwc(pixels)
    check_placeholders(np.asarray(input_ids), config.image_token_id,
                       (0 if pixels is None else pixels.shape[0]) * config.tokens_per_image)
    out = _compiled_apply(config)({"params": params}, input_ids, pixels, positions, mask)
    return np.asarray(out.logits, np.float32)

  def hf_processor_config(self, config, image_token):
    """`Blip2Processor` puts `num_query_tokens` `image_token`s in front of each prompt."""
    return dict(processor_class="Blip2Processor", num_query_tokens=config.tokens_per_image)


FAMILIES = (Blip2Family(),)

"""Families whose images are fixed-size tiles whose features replace placeholder tokens (LLaVA,
InternVL): the parts of the plug-in they share.

Their module is called as `module(input_ids [B, T], pixels [I, H, W, C] | None, positions [B, T],
attention_mask [B, T], segment_ids, image_valid=[I], head_loss=...)` and has `embed(input_ids,
pixels)` and a `decoder` (`mmjax.decoders.llama.Decoder`); their config has `vision` (with
`num_positions`, `image_size`, `num_channels`, `num_layers`, `hidden_size`), `decoder`,
`image_token_id` and `tokens_per_image`.
"""

import jax.numpy as jnp
import numpy as np

from mmjax.models import flops as fl
from mmjax.models.family import Family
from mmjax.models.inputs import nchw_to_nhwc, text_inputs, text_train_batch


class TiledImageFamily(Family):
  """LLaVA-style embedding fusion of fixed-size image tiles."""

  processor_keys = ("pixel_values",)
  flops_batch_keys = ("image_mask",)

  def example_inputs(self, config):
    """One row holding exactly one tile's placeholders, and that tile."""
    v = config.vision
    n = config.tokens_per_image
    return (jnp.full((1, n), config.image_token_id, jnp.int32),
            jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32),
            jnp.zeros((1, n), jnp.int32))

  def tokens_per_image(self, config) -> int:
    return config.tokens_per_image

  def forward_from_hf_inputs(self, config, params, inputs):
    """`input_ids [B, T]`, `attention_mask [B, T]` (optional), `position_ids [B, T]` (optional),
    `pixel_values [I, C, H, W]` (NCHW, as HF takes them) -> float32 logits `[B, T, V]`."""
    input_ids, mask, positions = text_inputs(inputs)
    pixels = inputs.get("pixel_values")
    pixels = None if pixels is None else jnp.asarray(nchw_to_nhwc(pixels))
    out = self.build(config).apply({"params": params}, input_ids, pixels, positions, mask)
    return np.asarray(out.logits, np.float32)

  def generation_adapter(self, config):
    from mmjax.generation.adapters import EmbeddingFusion

    return EmbeddingFusion(self.build(config), config, config.decoder, has_images=True)

  def example_processor_inputs(self, config, batch, length):
    n = config.tokens_per_image
    if length < n:
      raise ValueError(f"a prompt of {length} tokens cannot hold an image's {n} tokens")
    ids = np.zeros((batch, length), np.int32)
    ids[:, :n] = config.image_token_id
    v = config.vision
    return {"input_ids": ids, "pixel_values": np.zeros(
        (batch, v.num_channels, v.image_size, v.image_size), np.float32)}

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    from mmjax.generation.prompt import PromptBuilder

    return PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template)

  def generation_pixels(self, config, inputs):
    pixels = inputs.get("pixel_values")
    return None if pixels is None else nchw_to_nhwc(pixels)

  def image_token_mask(self, config, batch):
    return batch["input_ids"] == config.image_token_id

  def train_forward(self, module, params, batch, rng=None, head_loss=None):
    stochastic = self.stochastic_kwargs(module, rng) if rng is not None else {}
    out = module.apply(
        {"params": params}, batch["input_ids"], batch.get("pixel_values"), batch["positions"],
        batch["attention_mask"], batch.get("segment_ids"), image_valid=batch.get("image_mask"),
        head_loss=head_loss, **stochastic)
    return out.logits if head_loss is None else out.loss

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """See `tile_flops`."""
    return tile_flops(self.components, config, params, batch, trainable, attention)

  def abstract_train_batch(self, config, data, sds):
    """Rows own `max_tiles` image tiles `[H, W, C]`."""
    tiles = int(data["batch_size"]) * int(data.get("max_tiles", 1))
    v = config.vision
    return {**text_train_batch(data, sds), "image_mask": sds((tiles,), jnp.bool_),
            "pixel_values": sds((tiles, v.image_size, v.image_size, v.num_channels), jnp.float32)}


def tile_flops(components, config, params, batch, trainable, attention=("decoder", "encoder")):
  """The decoder per token; the encoder per patch of every real tile (`image_mask`, or every
  image of processor arrays' `pixel_values`); the connector per tile's tokens
  (`config.tokens_per_image`). `components`: the family's, in data-flow order."""
  rows, length = np.shape(batch["input_ids"])
  if "image_mask" in batch:
    images = int(np.sum(batch["image_mask"]))
  else:
    images = np.shape(batch["pixel_values"])[0] if "pixel_values" in batch else 0
  per = {name: fl.per_param(name, trainable, components) for name in components}
  flops = fl.decoder_flops(config.decoder, params.get("decoder", {}), rows, length,
                           per["decoder"], "decoder" in attention)
  if "encoder" in params and images:
    v = config.vision
    patches = images * v.num_positions
    products = 2 * v.num_layers * v.hidden_size * v.num_positions * patches
    flops += fl.encoder_flops(params["encoder"], patches, products * ("encoder" in attention),
                              per["encoder"])
  if "connector" in params and images:
    flops += per["connector"] * fl.count_params(params["connector"]) * images * \
        config.tokens_per_image
  return float(flops)

"""Families whose images the host lays out from the processor's arrays before the model sees
them (LLaVA-NeXT's tiles and feature layout, Pixtral's packed patches): the parts of the plug-in
they share.

A subclass names its processor arrays (`processor_keys`), turns them into the module's images
(`images_from_processor`) and checks those against the placeholders
(`check_image_placeholders`); generation runs through `mmjax.generation.adapters.HostImagesFusion`.
For training it turns a pipeline batch's fixed-shape image slots into the module's images under
jit (`train_images`): the layout the host computed from the images' sizes travels in the batch.
Its module is called as `module(input_ids [B, T], images, positions [B, T], attention_mask
[B, T])` and has `embed(input_ids, images)` and a `decoder`.
"""

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from mmjax.decoders.llama import DecoderOutput, HeadLoss
from mmjax.models.family import Family
from mmjax.models.inputs import text_inputs
from mmjax.nn.multihead import KVCache


class HostImagesModule(nn.Module):
  """The call the three modules share: `embed(input_ids, images)` (the subclass's: images into
  the placeholder slots), then its `decoder`."""

  def __call__(
      self,
      input_ids: jax.Array,
      images: Any,
      positions: jax.Array,
      attention_mask: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int = 0,
      head_loss: HeadLoss | None = None,
  ) -> DecoderOutput:
    """`input_ids [B, T]`, the batch's `images` (every image, in row order, as the family lays
    them out) -> the decoder's output (float32 logits `[B, T, V]`, cache, hidden states; or
    `head_loss`'s result)."""
    embeddings = self.embed(input_ids, images)
    return self.decoder(embeddings, positions, attention_mask, segment_ids, cache, cache_index,
                        head_loss=head_loss)


class HostImagesFamily(Family):

  def images_from_processor(self, config, inputs: Mapping[str, Any]) -> Any:
    """The module's images from the processor's arrays (None without images)."""
    raise NotImplementedError

  def check_image_placeholders(self, config, input_ids, images) -> None:
    """`PlaceholderMismatchError` unless the placeholders take exactly the images' features."""
    raise NotImplementedError

  def forward_from_hf_inputs(self, config, params, inputs):
    """`input_ids [B, T]`, `attention_mask`, `position_ids` (optional) and the family's
    `processor_keys` arrays as its processor makes them -> float32 logits `[B, T, V]`, as one
    compiled program (op by op, the towers and the scanned stacks run several times slower on
    CPU). The placeholders are counted on the host first: under jit the ids are traced."""
    input_ids, mask, positions = text_inputs(inputs)
    images = self.images_from_processor(config, inputs)
    self.check_image_placeholders(config, input_ids, images)
    logits = _compiled_logits(self, config)(params, input_ids, images, positions, mask)
    return np.asarray(logits, np.float32)

  def train_images(self, config, batch: Mapping[str, Any]) -> Any:
    """The module's images from a training batch's arrays (traced; schema:
    `mmjax.data.pipeline`)."""
    raise self._unsupported("training")

  def train_forward(self, module, params, batch, rng=None, head_loss=None):
    """Logits `[B, T, V]` (or `head_loss`'s result) of a packed training batch: the module on
    `train_images`, with the batch's per-sample positions and segments."""
    images = self.train_images(module.config, batch)
    out = module.apply({"params": params}, batch["input_ids"], images, batch["positions"],
                       batch["attention_mask"], batch.get("segment_ids"), head_loss=head_loss)
    return out.logits if head_loss is None else out.loss

  def image_token_mask(self, config, batch):
    return batch["input_ids"] == config.image_token_id

  def generation_adapter(self, config):
    from mmjax.generation.adapters import HostImagesFusion

    return HostImagesFusion(self.build(config), config, self)

  def generation_pixels(self, config, inputs):
    return {k: inputs[k] for k in self.processor_keys if k in inputs}  # the arrays as they are


@functools.lru_cache(maxsize=8)
def _compiled_logits(family: HostImagesFamily, config):
  """The forward's logits, jitted once per family and (frozen, hashable) config, so that inputs
  of shapes seen before run without compiling again."""
  module = family.build(config)
  return jax.jit(lambda params, *args: module.apply({"params": params}, *args).logits)

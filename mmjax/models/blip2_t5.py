"""BLIP-2 and InstructBLIP with a Flan-T5 language model (transformers `blip-2` /
`instructblip` whose `text_config` is a `t5`): the bridge is BLIP-2's, the language model T5's.

As in transformers 5, the projected query outputs replace the embeddings of the
`num_query_tokens` image tokens the processor puts in front of each prompt, and these
embeddings are the T5 encoder's input under the processor's attention mask; the decoder reads
`decoder_input_ids` (logits) or starts from its start token (generation), cross-attending to
the encoded prompt.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.decoders.llama import DecoderOutput
from mmjax.decoders.t5 import T5
from mmjax.decoders.t5_config import T5Config
from mmjax.encoders.vit import VisionTransformer
from mmjax.models.blip2 import (Blip2, Blip2Connector, Blip2Family, InstructBlip,
                                InstructBlipFamily, instructblip_images)
from mmjax.models.blip2_config import Blip2Config, InstructBlipConfig
from mmjax.models.fusion import check_placeholders
from mmjax.models.inputs import nchw_to_nhwc
from mmjax.models.t5 import decoder_inputs, encoder_inputs


class _T5Text:
  """The configs' language model: a T5 from `text_config`, written back as one."""

  @classmethod
  def _text_from_hf(cls, text, execution) -> T5Config:
    if text["model_type"] != "t5":
      raise ValueError(f"the Flan-T5 {cls.HF_TYPE!r} composition reads a 't5' text_config, "
                       f"not {text['model_type']!r}")
    return T5Config.from_hf(text, **execution)

  def _text_to_hf(self) -> dict[str, Any]:
    return {k: v for k, v in self.decoder.to_hf().items() if k != "architectures"}


@dataclasses.dataclass(frozen=True)
class Blip2T5Config(_T5Text, Blip2Config):
  """BLIP-2 whose `decoder` is a `T5Config`."""

  decoder: T5Config


@dataclasses.dataclass(frozen=True)
class InstructBlipT5Config(_T5Text, InstructBlipConfig):
  """InstructBLIP whose `decoder` is a `T5Config`."""

  decoder: T5Config


def _build(m) -> None:
  """The parts of either module (called from its `setup`)."""
  m.encoder = VisionTransformer(m.config.vision)
  m.connector = Blip2Connector(m.config)
  m.decoder = T5(m.config.decoder)


def _forward(m, input_ids, images, attention_mask, decoder_input_ids,
             decoder_attention_mask) -> DecoderOutput:
  return m.decoder(m.encoder_inputs(input_ids, images), attention_mask, decoder_input_ids,
                   decoder_attention_mask)


class Blip2T5(Blip2):
  """`input_ids [B, T]` with the image-token slots, `pixels [I, H, W, C]`, the encoder's
  `attention_mask [B, T]`, `decoder_input_ids [B, Td]` -> float32 decoder logits."""

  config: Blip2T5Config

  def setup(self):
    _build(self)

  def encoder_inputs(self, input_ids: jax.Array, images) -> jax.Array:
    """Token embeddings `[B, T, D]` with the query outputs in the image-token slots."""
    return self.embed(input_ids, images)

  def __call__(self, input_ids, images, attention_mask, decoder_input_ids,
               decoder_attention_mask=None) -> DecoderOutput:
    return _forward(self, input_ids, images, attention_mask, decoder_input_ids,
                    decoder_attention_mask)


class InstructBlipT5(InstructBlip):
  """InstructBLIP's images (`InstructBlipImages`: pixels and the Q-Former's instruction) into
  a T5's encoder."""

  config: InstructBlipT5Config

  def setup(self):
    _build(self)

  def encoder_inputs(self, input_ids: jax.Array, images) -> jax.Array:
    return self.embed(input_ids, images)

  def __call__(self, input_ids, images, attention_mask, decoder_input_ids,
               decoder_attention_mask=None) -> DecoderOutput:
    return _forward(self, input_ids, images, attention_mask, decoder_input_ids,
                    decoder_attention_mask)


@functools.lru_cache(maxsize=4)
def _compiled_apply(module_cls, config):
  """One jitted program per config: tower, Q-Former, encoder and decoder."""
  return jax.jit(module_cls(config).apply)


def _claims_t5_text(hf_config, model_type: str) -> bool:
  text = hf_config.get("text_config") or {}
  return hf_config.get("model_type") == model_type and text.get("model_type") == "t5"


class _T5LanguageModel:
  """What the two Flan-T5 families do alike: read a T5 `text_config`, take `decoder_input_ids`,
  generate with an encoder-decoder adapter (chat mode: the BLIP-2 / InstructBLIP prompt
  builders). No training yet."""

  hf_model_types = ()  # claimed by their text_config (`claims_hf`)
  table = "blip2_t5"

  def claims_hf(self, hf_config):
    return _claims_t5_text(hf_config, self.config_cls.HF_TYPE)

  def module_images(self, config, inputs):
    """The module's images from the processor's arrays, checked against the placeholders."""
    raise NotImplementedError

  def forward_from_hf_inputs(self, config, params, inputs):
    """The processor's arrays + `decoder_input_ids [B, Td]` (+ `decoder_attention_mask`) ->
    float32 decoder logits `[B, Td, V]`."""
    ids, mask = encoder_inputs(inputs)
    images = self.module_images(config, inputs)
    decoder_ids, decoder_mask = decoder_inputs(config.decoder, inputs)
    out = _compiled_apply(self.module_cls, config)({"params": params}, ids, images, mask,
                                                   decoder_ids, decoder_mask)
    return np.asarray(out.logits, np.float32)

  def generation_adapter(self, config):
    from mmjax.generation.encoder_decoder import EncoderDecoderFusion

    images = lambda input_ids, arrays: self.module_images(
        config, {"input_ids": input_ids, **(arrays or {})})
    return EncoderDecoderFusion(self.build(config), config, config.decoder, images=images)

  def generation_pixels(self, config, inputs):
    return {k: inputs[k] for k in self.processor_keys if k in inputs}

  def example_inputs(self, config):
    ids, images, _ = super().example_inputs(config)
    return ids, images, jnp.ones_like(ids), jnp.zeros((1, 2), jnp.int32)

  def train_forward(self, module, params, batch, rng=None, head_loss=None):
    raise self._unsupported("training")

  def abstract_train_batch(self, config, data, sds):
    raise self._unsupported("training")

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    raise self._unsupported("FLOP counting")


class Blip2T5Family(_T5LanguageModel, Blip2Family):
  """transformers' `blip-2` checkpoints with a Flan-T5 language model (logits, generation)."""

  name = "blip-2-t5"
  config_cls = Blip2T5Config
  module_cls = Blip2T5
  processor_keys = ("pixel_values",)

  def config_from_hf(self, hf_config, **execution):
    return Blip2T5Config.from_hf(hf_config, **execution)

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    """Blip2Processor's layout, its pixels as the processor's arrays (`mmjax.generation.blip2`);
    InstructBLIP-T5 takes InstructBLIP's builder as it is."""
    from mmjax.generation.blip2 import Blip2T5PromptBuilder

    return Blip2T5PromptBuilder.from_checkpoint(ckpt_dir, config)

  def module_images(self, config, inputs):
    pixels = inputs.get("pixel_values")
    pixels = None if pixels is None else nchw_to_nhwc(pixels)
    count = 0 if pixels is None else pixels.shape[0]
    check_placeholders(np.asarray(inputs["input_ids"]), config.image_token_id,
                       count * config.tokens_per_image)
    return pixels


class InstructBlipT5Family(_T5LanguageModel, InstructBlipFamily):
  """transformers' `instructblip` checkpoints with a Flan-T5 language model."""

  name = "instructblip-t5"
  config_cls = InstructBlipT5Config
  module_cls = InstructBlipT5

  def config_from_hf(self, hf_config, **execution):
    return InstructBlipT5Config.from_hf(hf_config, **execution)

  def module_images(self, config, inputs):
    images = instructblip_images(config, inputs)
    self.check_image_placeholders(config, inputs["input_ids"], images)
    return images


FAMILIES = (Blip2T5Family(), InstructBlipT5Family())

"""T5 / Flan-T5 as a text model (transformers `t5`, `T5ForConditionalGeneration`): the encoder
reads `input_ids`, the decoder `decoder_input_ids`; logits are the decoder's."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import limits
from mmjax.decoders.llama import DecoderOutput
from mmjax.decoders.t5 import T5
from mmjax.decoders.t5_config import T5Config
from mmjax.models.family import Family


class T5Model(nn.Module):
  """The language model under `decoder` (every family keeps its language model there)."""

  config: T5Config

  def setup(self):
    self.decoder = T5(self.config)

  def encoder_inputs(self, input_ids: jax.Array, images=None) -> jax.Array:
    """`input_ids [B, T]` -> the encoder's input embeddings `[B, T, D]` (text only)."""
    return self.decoder.embed(input_ids)

  def __call__(self, input_ids, attention_mask, decoder_input_ids,
               decoder_attention_mask=None) -> DecoderOutput:
    """`input_ids [B, T]`, `attention_mask [B, T]`, `decoder_input_ids [B, Td]` -> float32
    decoder logits `[B, Td, V]`."""
    return self.decoder(self.encoder_inputs(input_ids), attention_mask, decoder_input_ids,
                        decoder_attention_mask)


def decoder_inputs(config: T5Config, inputs) -> tuple[jax.Array, jax.Array | None]:
  """`decoder_input_ids [B, Td]` (checked against the vocabulary) and the optional
  `decoder_attention_mask [B, Td]` of processor arrays."""
  if "decoder_input_ids" not in inputs:
    raise KeyError("an encoder-decoder (T5) model's logits need decoder_input_ids beside "
                   f"input_ids (have: {sorted(inputs)})")
  ids = np.asarray(inputs["decoder_input_ids"])
  if ids.ndim != 2:
    raise ValueError(f"decoder_input_ids must be [batch, length], got {ids.shape}")
  limits.check_token_ids(ids, config, "decoder_input_ids")
  mask = inputs.get("decoder_attention_mask")
  if mask is not None and np.shape(mask) != ids.shape:
    raise ValueError(f"decoder_attention_mask {np.shape(mask)} does not match "
                     f"decoder_input_ids {ids.shape}")
  return (jnp.asarray(ids, jnp.int32),
          None if mask is None else jnp.asarray(mask, jnp.int32))


def encoder_inputs(inputs) -> tuple[jax.Array, jax.Array]:
  """`input_ids [B, T]` and `attention_mask [B, T]` (ones when absent; padding on either side)."""
  if "input_ids" not in inputs:
    raise KeyError(f"inputs lack 'input_ids' (have: {sorted(inputs)})")
  ids = jnp.asarray(inputs["input_ids"], jnp.int32)
  mask = inputs.get("attention_mask")
  return ids, jnp.ones_like(ids) if mask is None else jnp.asarray(mask, jnp.int32)


@functools.lru_cache(maxsize=4)
def _compiled_apply(config: T5Config):
  return jax.jit(T5Model(config).apply)


class T5Family(Family):
  """transformers' `t5` checkpoints (T5, T5 v1.1, Flan-T5): logits and generation."""

  name = "t5"
  hf_model_types = ("t5",)
  config_cls = T5Config
  module_cls = T5Model
  table = "t5"
  components = ("decoder",)
  stacks = {"decoder": ""}  # the family config is the language model's

  def config_from_hf(self, hf_config, **execution):
    return T5Config.from_hf(hf_config, **execution)

  def decoder_config(self, config):
    return config

  def example_inputs(self, config):
    ids = jnp.zeros((1, 4), jnp.int32)
    return ids, jnp.ones_like(ids), ids[:, :2]

  def forward_from_hf_inputs(self, config, params, inputs):
    """`input_ids`, `attention_mask`, `decoder_input_ids` (+ `decoder_attention_mask`) ->
    float32 decoder logits `[B, Td, V]`."""
    ids, mask = encoder_inputs(inputs)
    decoder_ids, decoder_mask = decoder_inputs(config, inputs)
    out = _compiled_apply(config)({"params": params}, ids, mask, decoder_ids, decoder_mask)
    return np.asarray(out.logits, np.float32)

  def generation_adapter(self, config):
    from mmjax.generation.encoder_decoder import EncoderDecoderFusion

    return EncoderDecoderFusion(self.build(config), config, config, images=_text_only)

  def generation_pixels(self, config, inputs):
    return None

  def example_processor_inputs(self, config, batch, length):
    return {"input_ids": np.zeros((batch, length), np.int32)}


def _text_only(input_ids, pixels):
  if pixels is not None:
    raise ValueError("this t5 checkpoint is text-only but got images")
  return None


FAMILIES = (T5Family(),)

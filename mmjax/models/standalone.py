"""Single-tower models: a causal LM, a vision encoder. Same parameter subtrees as in a VLM."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import Decoder, DecoderOutput
from mmjax.encoders.vit import VisionConfig, VisionTransformer
from mmjax.models import flops as fl
from mmjax.models.family import Family
from mmjax.models.inputs import nchw_to_nhwc, text_inputs, text_train_batch


class CausalLM(nn.Module):
  config: DecoderConfig

  def setup(self):
    self.decoder = Decoder(self.config)

  def __call__(self, input_ids, positions, attention_mask=None, segment_ids=None, cache=None,
               cache_index=0, head_loss=None) -> DecoderOutput:
    """`input_ids [B, T]` -> the decoder's output (float32 logits `[B, T, V]`, the updated
    cache, the last hidden states, or `head_loss`'s result when given)."""
    return self.decoder(self.decoder.embed(input_ids), positions, attention_mask, segment_ids,
                        cache, cache_index, head_loss=head_loss)


class VisionModel(nn.Module):
  config: VisionConfig

  def setup(self):
    self.encoder = VisionTransformer(self.config)

  def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
    return self.encoder(pixels)


class CausalLMFamily(Family):
  """Llama-family text models (Llama, Mistral, Qwen2, Qwen3), Persimmon and OPT."""

  name = "causal_lm"
  hf_model_types = ("llama", "mistral", "qwen2", "qwen3", "persimmon", "opt")
  config_cls = DecoderConfig
  module_cls = CausalLM
  table = "causal_lm"
  components = ("decoder",)
  stacks = {"decoder": ""}  # the family config is the decoder's

  def config_from_hf(self, hf_config, **execution):
    return DecoderConfig.from_hf(hf_config, **execution)

  def decoder_config(self, config):
    return config

  def example_inputs(self, config):
    return jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32)

  def forward_from_hf_inputs(self, config, params, inputs):
    input_ids, mask, positions = text_inputs(inputs)
    out = self.build(config).apply({"params": params}, input_ids, positions, mask)
    return np.asarray(out.logits, np.float32)

  def generation_adapter(self, config):
    from mmjax.generation.adapters import EmbeddingFusion

    return EmbeddingFusion(self.build(config), config, config, has_images=False)

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    from mmjax.generation.prompt import PromptBuilder

    return PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template)

  def generation_pixels(self, config, inputs):
    pixels = inputs.get("pixel_values")
    return None if pixels is None else nchw_to_nhwc(pixels)

  def example_processor_inputs(self, config, batch, length):
    return {"input_ids": np.zeros((batch, length), np.int32)}

  def train_forward(self, module, params, batch, rng=None, head_loss=None):
    out = module.apply({"params": params}, batch["input_ids"], batch["positions"],
                       batch["attention_mask"], batch.get("segment_ids"), head_loss=head_loss)
    return out.logits if head_loss is None else out.loss

  def train_flops(self, config, params, batch, trainable, attention=("decoder",)):
    rows, length = np.shape(batch["input_ids"])
    per = fl.per_param("decoder", trainable, self.components)
    return fl.decoder_flops(config, params["decoder"], rows, length, per, "decoder" in attention)

  def abstract_train_batch(self, config, data, sds):
    return text_train_batch(data, sds)


class VisionFamily(Family):
  """CLIP / SigLIP vision towers alone (hidden states through the Python API; no logits)."""

  name = "vision"
  hf_model_types = ("clip_vision_model", "siglip_vision_model")
  config_cls = VisionConfig
  module_cls = VisionModel
  table = "vision"
  components = ("encoder",)
  stacks = {"encoder": ""}

  def config_from_hf(self, hf_config, **execution):
    return VisionConfig.from_hf(hf_config, **execution)

  def decoder_config(self, config):
    return None

  def example_inputs(self, config):
    return (jnp.zeros((1, config.image_size, config.image_size, config.num_channels)),)


FAMILIES = (CausalLMFamily(), VisionFamily())

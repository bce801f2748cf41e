"""IDEFICS (v1, transformers `idefics`): the open Flamingo. A CLIP-style vision tower, an optional
Perceiver Resampler, and a Llama decoder with a gated cross-attention layer before every
`cross_layer_interval`-th layer (`mmjax.models.idefics_config`), in which text tokens read the
image states; image tokens never enter the sequence.

Images arrive as `IdeficsProcessor` makes them: `pixel_values [B, N, C, H, W]` (NHWC here) and
`image_attention_mask [B, T, N]`, 1 where text token t sees image n (the latest image before it).
Each image gives `S` states (every tower token, or the resampler's latents), laid out image-major
as `[B, N*S, Dv]`. All-zero images are the processor's padding: no token sees them, and they run
through the tower as in transformers. A token that sees no image gets no cross-attention output
(its gated layers still add their MLP). A text-only prompt is what the processor makes of one:
one all-zero image that no token sees.

The decoupled embedding and LM head (`additional_vocab_size` rows, e.g. `<image>`) live in their
own parameters (`decoder/embed_additional`, `decoder/lm_head_additional`): `train.trainable` can
name the part `additional_vocab` while the base vocabulary stays frozen.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.perceiver import PerceiverResampler
from mmjax.decoders.cross import CrossInputs
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.vit import VisionTransformer
from mmjax.models.family import Family
from mmjax.models.idefics_config import IdeficsConfig
from mmjax.models.inputs import text_inputs
from mmjax.nn.masks import tile_cross_attention_mask

PROCESSOR_KEYS = ("pixel_values", "image_attention_mask")
Images = Mapping[str, jax.Array]  # pixel_values [B, N, H, W, C], image_attention_mask [B, T, N]


class Idefics(nn.Module):
  config: IdeficsConfig

  def setup(self):
    cfg = self.config
    self.encoder = VisionTransformer(cfg.vision)
    if cfg.resampler is not None:
      self.connector = PerceiverResampler(cfg.resampler)
    self.decoder = Decoder(cfg.decoder)

  def image_states(self, images: Images) -> jax.Array:
    """`pixel_values [B, N, H, W, C]` -> image states `[B, N*S, Dv]`: the tower's last layer
    (before its post-layernorm, as transformers reads it), resampled when configured."""
    pixels = images["pixel_values"]
    b, n = pixels.shape[:2]
    states = self.encoder(pixels.reshape(b * n, *pixels.shape[2:]))["last_hidden_state"]
    if self.config.resampler is not None:
      states = self.connector(states)  # [B*N, L, Dv]
    return states.reshape(b, n * states.shape[1], states.shape[2])

  def cross_inputs(self, input_ids, images: Images, states, segment_ids=None) -> CrossInputs:
    """The gated layers' inputs from `image_attention_mask [B, T, N]`: each token sees every
    state of the images it sees; `row_mask` zeroes the cross-attention of tokens that see
    none (transformers' `cross_attention_gate`)."""
    sees = images["image_attention_mask"].astype(bool)  # [B, T, N]
    per_image = states.shape[1] // sees.shape[2]
    mask = tile_cross_attention_mask(sees[..., None], per_image)  # [B, 1, T, N*S]
    return CrossInputs(states, mask, jnp.any(sees, axis=-1).astype(jnp.float32))

  def __call__(
      self,
      input_ids: jax.Array,
      images: Images,
      positions: jax.Array,
      attention_mask: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: Any = None,
      cache_index: jax.Array | int = 0,
      head_loss: HeadLoss | None = None,
  ) -> DecoderOutput:
    """`input_ids [B, T]`, `images` (see the module docstring), `positions [B, T]`."""
    cross = self.cross_inputs(input_ids, images, self.image_states(images), segment_ids)
    return self.decoder(self.decoder.embed(input_ids), positions, attention_mask, segment_ids,
                        cache, cache_index, head_loss=head_loss, cross=cross)


def images_from_processor(config: IdeficsConfig,
                          inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The processor's `pixel_values [B, N, C, H, W]` and `image_attention_mask [B, T, N]` -> the
  module's images (NHWC), checked against `input_ids`. Without `pixel_values`: the processor's
  arrays of text-only prompts (one all-zero image that no token sees)."""
  b, t = np.shape(inputs["input_ids"])
  v = config.vision
  pixels, mask = inputs.get("pixel_values"), inputs.get("image_attention_mask")
  if pixels is None:
    if mask is not None and np.any(mask):
      raise KeyError("inputs have an image_attention_mask that sees images but no pixel_values")
    pixels = np.zeros((b, 1, v.num_channels, v.image_size, v.image_size), np.float32)
    mask = np.zeros((b, t, 1), bool)
  elif mask is None:
    raise KeyError("inputs have 'pixel_values' but no 'image_attention_mask' (which images each "
                   "token sees, [batch, length, images])")
  pixels = np.asarray(pixels, np.float32)
  if pixels.ndim != 5:
    raise ValueError(f"pixel_values must be [batch, images, channels, height, width], got "
                     f"{pixels.shape}")
  images = {"pixel_values": np.transpose(pixels, (0, 1, 3, 4, 2)),
            "image_attention_mask": np.asarray(mask).astype(bool)}
  check_images(config, inputs["input_ids"], images)
  return images


def check_images(config: IdeficsConfig, input_ids, images: Images) -> None:
  """The module's images fit `input_ids [B, T]`: `pixel_values [B, N, H, W, C]` of the tower's
  size, `image_attention_mask [B, T, N]`."""
  b, t = np.shape(input_ids)
  v = config.vision
  pixels, mask = np.shape(images["pixel_values"]), np.shape(images["image_attention_mask"])
  if len(pixels) != 5 or pixels[0] != b or pixels[2:] != (v.image_size, v.image_size,
                                                          v.num_channels):
    raise ValueError(f"images must be [batch={b}, images, {v.image_size}, {v.image_size}, "
                     f"{v.num_channels}] (NHWC; the processor's pixel_values NCHW), got {pixels}")
  if mask != (b, t, pixels[1]):
    raise ValueError(f"image_attention_mask {mask} must be [batch, length, images] = "
                     f"{(b, t, pixels[1])} for input_ids {(b, t)} and {pixels[1]} images a row")


class IdeficsFamily(Family):
  name = "idefics"
  hf_model_types = ("idefics",)
  config_cls = IdeficsConfig
  module_cls = Idefics
  table = "idefics"
  # Flamingo trains the resampler ("connector"), the gated layers and the new vocabulary rows
  # while the vision tower and the language model stay frozen.
  parts = {"gated_cross": r"decoder/layers(_\d+)?/gated_cross_\d+/.*",
           "additional_vocab": r"decoder/(embed|lm_head)_additional/.*",
           "language_model":
               r"decoder/(?!layers(_\d+)?/gated_cross_\d+/|(embed|lm_head)_additional/).*"}
  processor_keys = PROCESSOR_KEYS

  def config_from_hf(self, hf_config, **execution):
    return IdeficsConfig.from_hf(hf_config, **execution)

  def example_inputs(self, config):
    """One row of two tokens that see one image."""
    v = config.vision
    images = {"pixel_values": jnp.zeros((1, 1, v.image_size, v.image_size, v.num_channels)),
              "image_attention_mask": jnp.ones((1, 2, 1), bool)}
    return jnp.zeros((1, 2), jnp.int32), images, jnp.arange(2)[None]

  def forward_from_hf_inputs(self, config, params, inputs):
    """`input_ids`, `attention_mask`, `position_ids` (optional) and IdeficsProcessor's
    `pixel_values [B, N, C, H, W]`, `image_attention_mask [B, T, N]` -> float32 logits
    `[B, T, V + additional_vocab_size]`."""
    input_ids, mask, positions = text_inputs(inputs)
    images = jax.tree.map(jnp.asarray, images_from_processor(config, inputs))
    out = self.build(config).apply({"params": params}, input_ids, images, positions, mask)
    return np.asarray(out.logits, np.float32)

  def generation_adapter(self, config):
    from mmjax.generation.idefics import IdeficsAdapter

    return IdeficsAdapter(self.build(config), config)

  def generation_pixels(self, config, inputs):
    return images_from_processor(config, inputs)

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    """IdeficsProcessor's layout of the images then the prompt (`mmjax.generation.
    idefics_prompt`); IDEFICS has no chat template, so `chat_template` changes nothing."""
    from mmjax.generation.idefics_prompt import IdeficsPromptBuilder

    return IdeficsPromptBuilder.from_checkpoint(ckpt_dir, config)

  def example_processor_inputs(self, config, batch, length):
    v = config.vision
    return {"input_ids": np.zeros((batch, length), np.int32),
            "pixel_values": np.zeros((batch, 1, v.num_channels, v.image_size, v.image_size),
                                     np.float32),
            "image_attention_mask": np.ones((batch, length, 1), bool)}


FAMILIES = (IdeficsFamily(),)

"""Idefics2 (transformers `idefics2`): a SigLIP tower over images of any size (fractional
positions, padding patches masked), a SwiGLU projection and a Perceiver Resampler
(`mmjax.connectors.projected_resampler`), and a Mistral decoder. Each image's resampled tokens
replace its `<image>` placeholders (`tokens_per_image` = the resampler's latents), in order.

Images arrive as `Idefics2Processor` makes them: `pixel_values [B, N, C, H, W]`, every image of
the batch padded at the bottom and right to the largest, rows with fewer images filled with
all-zero ones, and `pixel_attention_mask [B, N, H, W]` (1 on real pixels; absent: all real, as
transformers takes it). As transformers does, the host drops the all-zero images
(`real_images_inds`) and keeps a patch only when all its pixels are real (`patch_mask`); the
module sees the real images alone, `[I, H, W, C]` with `patch_mask [I, Gh, Gw]`.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.projected_resampler import ProjectedResampler
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.vit import VisionTransformer
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.host_images import HostImagesFamily
from mmjax.models.idefics2_config import Idefics2Config
from mmjax.nn.multihead import KVCache

PROCESSOR_KEYS = ("pixel_values", "pixel_attention_mask")

Images = dict  # {'pixel_values': [I, H, W, C] float32, 'patch_mask': [I, Gh, Gw] bool}


class Idefics2(nn.Module):
  config: Idefics2Config

  def setup(self):
    cfg = self.config
    self.encoder = VisionTransformer(cfg.vision)
    self.connector = ProjectedResampler(cfg.connector)
    self.decoder = Decoder(cfg.decoder)

  def image_features(self, images: Images) -> jax.Array:
    """Real images -> `[I * L, D_text]`: each image's resampled tokens, in order."""
    patch_mask = images["patch_mask"]
    states = self.encoder(images["pixel_values"], patch_mask=patch_mask)["last_hidden_state"]
    tokens = self.connector(states, patch_mask.reshape(patch_mask.shape[0], -1))  # [I, L, D]
    return tokens.reshape(-1, tokens.shape[-1])

  def embed(self, input_ids: jax.Array, images: Images | None) -> jax.Array:
    """Text embeddings `[B, T, D]` with the images' tokens in the `<image>` slots."""
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)
    check_image_placeholders(cfg, input_ids, images)
    if images is None:
      return embeddings
    return merge_image_features(embeddings, input_ids == cfg.image_token_id,
                                self.image_features(images))

  def __call__(
      self,
      input_ids: jax.Array,
      images: Images | None,
      positions: jax.Array,
      attention_mask: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int = 0,
      head_loss: HeadLoss | None = None,
  ) -> DecoderOutput:
    """`input_ids [B, T]`, `images` from `images_from_processor` (every real image of the batch,
    in row order) -> the decoder's output (float32 logits `[B, T, V]`, cache, hidden states)."""
    embeddings = self.embed(input_ids, images)
    return self.decoder(embeddings, positions, attention_mask, segment_ids, cache, cache_index,
                        head_loss=head_loss)


def num_images(images: Images | None) -> int:
  return 0 if images is None else int(np.shape(images["pixel_values"])[0])


def check_image_placeholders(config: Idefics2Config, input_ids, images: Images | None) -> None:
  """`PlaceholderMismatchError` unless the `<image>` placeholders take exactly the real images'
  tokens (concrete `input_ids` only)."""
  check_placeholders(input_ids, config.image_token_id, num_images(images) * config.tokens_per_image)


def patch_mask_from_pixels(pixel_mask: np.ndarray, patch: int) -> np.ndarray:
  """`pixel_mask [I, H, W]` -> `[I, H // patch, W // patch]` bool: a patch is real when its
  pixels' mask values sum to patch^2 (all real, for a 0/1 mask), as transformers 5 decides;
  rows and columns past the last whole patch are dropped, as its `unfold` drops them."""
  i, h, w = pixel_mask.shape
  gh, gw = h // patch, w // patch
  blocks = np.asarray(pixel_mask, np.int64)[:, :gh * patch, :gw * patch]
  sums = blocks.reshape(i, gh, patch, gw, patch).sum(axis=(2, 4))  # [I, Gh, Gw]
  return sums == patch * patch


def images_from_processor(config: Idefics2Config, inputs: Mapping[str, Any]) -> Images | None:
  """Idefics2Processor's `pixel_values [B, N, C, H, W]` and `pixel_attention_mask [B, N, H, W]`
  (optional) -> the real (not all-zero) images NHWC and their patch masks; None without any."""
  pixels, pixel_mask = inputs.get("pixel_values"), inputs.get("pixel_attention_mask")
  if pixels is None:
    if pixel_mask is not None:
      raise KeyError("inputs have a pixel_attention_mask but no pixel_values")
    return None
  pixels = np.asarray(pixels, np.float32)
  if pixels.ndim != 5:
    raise ValueError(f"pixel_values must be [batch, images, channels, height, width], got "
                     f"{pixels.shape}")
  b, n, c, h, w = pixels.shape
  v = config.vision
  if c != v.num_channels or h < v.patch_size or w < v.patch_size:
    raise ValueError(f"pixel_values {pixels.shape} must have {v.num_channels} channels and "
                     f"images of at least {v.patch_size}x{v.patch_size} pixels")
  flat = pixels.reshape(b * n, c, h, w)
  real = np.any(flat != 0.0, axis=(1, 2, 3))  # [B*N] transformers' `real_images_inds`
  if pixel_mask is None:
    pixel_mask = np.ones((int(real.sum()), h, w), np.int64)
  else:
    pixel_mask = np.asarray(pixel_mask)
    if pixel_mask.shape != (b, n, h, w):
      raise ValueError(f"pixel_attention_mask {pixel_mask.shape} must be [batch, images, height, "
                       f"width] = {(b, n, h, w)} for pixel_values {pixels.shape}")
    pixel_mask = pixel_mask.reshape(b * n, h, w)[real]
  if not real.any():
    return None
  return {"pixel_values": np.ascontiguousarray(flat[real].transpose(0, 2, 3, 1)),
          "patch_mask": patch_mask_from_pixels(pixel_mask, v.patch_size)}


class Idefics2Family(HostImagesFamily):
  """transformers' `idefics2` checkpoints (inference: logits, generation)."""

  name = "idefics2"
  hf_model_types = ("idefics2",)
  config_cls = Idefics2Config
  module_cls = Idefics2
  table = "idefics2"
  processor_keys = PROCESSOR_KEYS

  def config_from_hf(self, hf_config, **execution):
    return Idefics2Config.from_hf(hf_config, **execution)

  def hf_processor_config(self, config, image_token):
    """`Idefics2Processor` expands each image to `image_seq_len` `image_token`s between
    `<fake_token_around_image>`s."""
    return dict(processor_class="Idefics2Processor", image_seq_len=config.tokens_per_image)

  def example_inputs(self, config):
    """One row holding one image's placeholders, and that image (of `vision.image_size`)."""
    v = config.vision
    g = v.grid
    images = {"pixel_values": jnp.zeros((1, v.image_size, v.image_size, v.num_channels)),
              "patch_mask": jnp.ones((1, g, g), bool)}
    ids = jnp.full((1, config.tokens_per_image), config.image_token_id, jnp.int32)
    return ids, images, jnp.zeros_like(ids)

  def images_from_processor(self, config, inputs):
    return images_from_processor(config, inputs)

  def check_image_placeholders(self, config, input_ids, images):
    check_image_placeholders(config, input_ids, images)

  def example_processor_inputs(self, config, batch, length):
    """One image of `vision.image_size` per row (nothing padded), its placeholders first."""
    n = config.tokens_per_image
    if length < n:
      raise ValueError(f"a prompt of {length} tokens cannot hold an image's {n} tokens")
    ids = np.zeros((batch, length), np.int32)
    ids[:, :n] = config.image_token_id
    v = config.vision
    side = v.image_size
    return {"input_ids": ids,
            "pixel_values": np.ones((batch, 1, v.num_channels, side, side), np.float32),
            "pixel_attention_mask": np.ones((batch, 1, side, side), np.int64)}


FAMILIES = (Idefics2Family(),)

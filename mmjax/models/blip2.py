"""BLIP-2 (transformers `blip-2`, `Blip2ForConditionalGeneration`): an EVA vision tower, a Q-Former
whose learned queries read its features, a `language_projection` Linear, and an OPT or
Llama-family decoder. InstructBLIP (`instructblip`) is the same composition whose Q-Former also
reads the instruction (`qformer_input_ids`, its own BERT vocabulary) as text rows beside the
queries, every row seeing every row; only the query rows leave the Q-Former.

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
from mmjax.models.blip2_config import Blip2Config, InstructBlipConfig, config_from_dict
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.inputs import nchw_to_nhwc, text_inputs
from mmjax.models.host_images import HostImagesFamily
from mmjax.models.tiled_family import TiledImageFamily
from mmjax.nn.linear import Einsum
from mmjax.nn.multihead import KVCache


class Blip2Connector(nn.Module):
  """Q-Former, then `language_projection`: image features `[I, S, E]` -> `[I, Q, D_text]`."""

  config: Blip2Config

  @nn.compact
  def __call__(self, features: jax.Array, deterministic: bool = True,
               text_ids: jax.Array | None = None, text_mask: jax.Array | None = None) -> jax.Array:
    """`text_ids [I, T]` / `text_mask [I, T]`: InstructBLIP's instruction rows, beside the
    queries under the all-see-all mask; only the query rows leave."""
    cfg = self.config
    queries = QFormer(cfg.qformer, name="qformer")(
        features, text_mask=text_mask, mask="itm", deterministic=deterministic,
        text_ids=text_ids).queries
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

  def image_count(self, pixels) -> int:
    return pixels.shape[0]

  def embed(self, input_ids: jax.Array, pixels: jax.Array | None,
            image_valid: jax.Array | None = None) -> jax.Array:
    """Token embeddings `[B, T, D]` with the images' query tokens in the image-token slots;
    `image_valid [I]` marks real images among padding slots (training batches)."""
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)
    is_placeholder = input_ids == cfg.image_token_id
    if pixels is None or self.image_count(pixels) == 0:
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
  stacks = {"encoder": "vision", "connector": "qformer", "decoder": "decoder"}
  # The connector's two halves (`train.trainable`): MiniGPT-4 trains the projection alone.
  parts = {"qformer": r"connector/qformer/.*", "projection": r"connector/projection/.*"}

  def config_from_hf(self, hf_config, **execution):
    return Blip2Config.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    """Stage 2 (and MiniGPT-4) from `model.{vision, qformer, decoder, image_token_id}`: see
    `blip2_config.config_from_dict`."""
    return config_from_dict(model)

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    """Blip2Processor's layout (`mmjax.generation.blip2`): the image tokens before the BOS (the
    processor has no chat template). A checkpoint that carries a chat template (a composition
    mmjax trained, e.g. MiniGPT-4 with `###Human: <Img><image></Img> ...`) renders the prompt
    with it instead, its `<image>` expanded to the queries' tokens, as in training; not with
    `chat_template=False`."""
    from mmjax.generation.blip2 import Blip2PromptBuilder
    from mmjax.generation.prompt import PromptBuilder, has_chat_template

    if chat_template and has_chat_template(ckpt_dir):
      return PromptBuilder.from_checkpoint(ckpt_dir, config)
    return Blip2PromptBuilder.from_checkpoint(ckpt_dir, config)

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


class InstructBlip(Blip2):
  """InstructBLIP: the images come with the Q-Former's instruction ids (`InstructBlipImages`)."""

  config: InstructBlipConfig

  def image_features(self, images: dict) -> jax.Array:
    states = self.encoder(images["pixel_values"])["last_hidden_state"]
    return self.connector(states, text_ids=images["qformer_input_ids"],
                          text_mask=images["qformer_attention_mask"])

  def image_count(self, images) -> int:
    return images["pixel_values"].shape[0]


# {'pixel_values': [I, H, W, C] float32, 'qformer_input_ids': [I, T] int32,
#  'qformer_attention_mask': [I, T] int32}: one image and its instruction per row.
InstructBlipImages = dict


def instructblip_images(config: InstructBlipConfig, inputs) -> InstructBlipImages | None:
  """InstructBlipProcessor's `pixel_values [B, C, H, W]`, `qformer_input_ids [B, T]` and
  `qformer_attention_mask [B, T]` (ones when absent) -> the module's images; None without
  pixels."""
  pixels = inputs.get("pixel_values")
  if pixels is None:
    return None
  pixels = nchw_to_nhwc(pixels)
  if "qformer_input_ids" not in inputs:
    raise KeyError("InstructBLIP inputs with pixel_values need qformer_input_ids (the "
                   "instruction for the Q-Former)")
  ids = np.asarray(inputs["qformer_input_ids"], np.int32)
  mask = inputs.get("qformer_attention_mask")
  mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int32)
  if ids.ndim != 2 or ids.shape[0] != pixels.shape[0] or mask.shape != ids.shape:
    raise ValueError(f"qformer_input_ids {ids.shape} and qformer_attention_mask {mask.shape} "
                     f"must be [images, tokens] for {pixels.shape[0]} images")
  if ids.shape[1] > config.qformer.text_max_positions:
    raise ValueError(f"qformer_input_ids have {ids.shape[1]} tokens, more than the Q-Former's "
                     f"{config.qformer.text_max_positions} positions")
  return {"pixel_values": pixels, "qformer_input_ids": ids, "qformer_attention_mask": mask}


class InstructBlipFamily(HostImagesFamily):
  """transformers' `instructblip` checkpoints with a decoder-only language model (inference:
  logits, generation)."""

  name = "instructblip"
  hf_model_types = ("instructblip",)
  config_cls = InstructBlipConfig
  module_cls = InstructBlip
  table = "blip2"
  stacks = {"encoder": "vision", "connector": "qformer", "decoder": "decoder"}
  processor_keys = ("pixel_values", "qformer_input_ids", "qformer_attention_mask")
  hf_extra_dirs = ("qformer_tokenizer",)  # InstructBlipProcessor's Q-Former tokenizer

  def config_from_hf(self, hf_config, **execution):
    return InstructBlipConfig.from_hf(hf_config, **execution)

  def hf_processor_config(self, config, image_token):
    return dict(processor_class="InstructBlipProcessor", num_query_tokens=config.tokens_per_image)

  def tokens_per_image(self, config) -> int:
    return config.tokens_per_image

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    """InstructBlipProcessor's layout and Q-Former instruction (`mmjax.generation.blip2`); no
    chat template, so `chat_template` changes nothing."""
    from mmjax.generation.blip2 import InstructBlipPromptBuilder

    return InstructBlipPromptBuilder.from_checkpoint(ckpt_dir, config)

  def example_inputs(self, config):
    v, n = config.vision, config.tokens_per_image
    images = {"pixel_values": jnp.zeros((1, v.image_size, v.image_size, v.num_channels)),
              "qformer_input_ids": jnp.zeros((1, 2), jnp.int32),
              "qformer_attention_mask": jnp.ones((1, 2), jnp.int32)}
    ids = jnp.full((1, n), config.image_token_id, jnp.int32)
    return ids, images, jnp.zeros_like(ids)

  def images_from_processor(self, config, inputs):
    return instructblip_images(config, inputs)

  def check_image_placeholders(self, config, input_ids, images):
    count = 0 if images is None else images["pixel_values"].shape[0]
    check_placeholders(np.asarray(input_ids), config.image_token_id,
                       count * config.tokens_per_image)

  def example_processor_inputs(self, config, batch, length):
    n = config.tokens_per_image
    if length < n:
      raise ValueError(f"a prompt of {length} tokens cannot hold an image's {n} tokens")
    ids = np.zeros((batch, length), np.int32)
    ids[:, :n] = config.image_token_id
    v = config.vision
    return {"input_ids": ids,
            "pixel_values": np.zeros((batch, v.num_channels, v.image_size, v.image_size),
                                     np.float32),
            "qformer_input_ids": np.zeros((batch, 4), np.int32),
            "qformer_attention_mask": np.ones((batch, 4), np.int32)}


FAMILIES = (Blip2Family(), InstructBlipFamily())

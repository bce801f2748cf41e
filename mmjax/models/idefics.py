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

Training batches (`mmjax.data.pipeline`; interleaved documents, `mmjax.data.documents`) carry no
`image_attention_mask`: it follows from the `<image>` tokens (`config.image_token_id`) as
IdeficsProcessor computes it, within each packed sample (`image_attention_mask`). Flamingo's
recipe freezes the tower and the language model and trains the resampler, the gated layers and
the new embedding rows: `train.trainable=("connector", "gated_cross", "additional_vocab")`.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.perceiver import PerceiverResampler
from mmjax.decoders.cross import CrossInputs
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.vit import VisionTransformer
from mmjax.models import flops as fl
from mmjax.models.family import Family
from mmjax.models.idefics_config import IdeficsConfig
from mmjax.models.inputs import text_inputs, text_train_batch
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


def image_attention_mask(input_ids: jax.Array, image_token_id: int,
                         segment_ids: jax.Array | None, images: int) -> jax.Array:
  """`input_ids [B, T]` -> bool `[B, T, images]`: token t sees image slot n when the n-th image
  token of its row is the latest one at or before t (Flamingo's φ; IdeficsProcessor's mask,
  where the image token sees its own image) and belongs to t's packed sample (`segment_ids`):
  tokens before their sample's first image, and padding, see none."""
  b, t = input_ids.shape
  is_image = input_ids == image_token_id  # [B, T]
  latest = jnp.cumsum(is_image, axis=1) - 1  # [B, T] the latest image's slot (-1: none yet)
  if segment_ids is not None:
    where = jax.lax.cummax(jnp.where(is_image, jnp.arange(t)[None], -1), axis=1)  # its token
    own = jnp.take_along_axis(segment_ids, jnp.maximum(where, 0), axis=1) == segment_ids
    latest = jnp.where((where >= 0) & own, latest, -1)
  return latest[..., None] == jnp.arange(images)  # [B, T, N]


def train_images(config: IdeficsConfig, batch: Mapping[str, jax.Array],
                 rows: int) -> dict[str, jax.Array]:
  """The module's images from a training batch: its image slots `pixel_values [B*N, H, W, C]`
  (row b owns slots `[b*N, (b+1)*N)` in the order of its image tokens; the shapes set: one a
  row), and `image_attention_mask [B, T, N]` from the image tokens (`image_attention_mask`)."""
  if config.image_token_id is None:
    raise ValueError("IDEFICS training finds images by their token: set model.image_token_id "
                     "(the tokenizer's <image> id; transformers' config does not hold it)")
  pixels = batch["pixel_values"]
  if pixels.shape[0] % rows:
    raise ValueError(f"{pixels.shape[0]} image slots do not divide over {rows} rows")
  slots = pixels.shape[0] // rows
  mask = image_attention_mask(batch["input_ids"], config.image_token_id,
                              batch.get("segment_ids"), slots)
  return {"pixel_values": pixels.reshape(rows, slots, *pixels.shape[1:]),
          "image_attention_mask": mask}


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
  flops_batch_keys = ("image_mask",)

  def config_from_hf(self, hf_config, **execution):
    return IdeficsConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return IdeficsConfig.from_training(model)

  def with_training_settings(self, config, model):
    """`model.image_token_id` for a converted checkpoint (its config.json has none)."""
    token = model.get("image_token_id")
    return config if token is None else dataclasses.replace(config, image_token_id=int(token))

  def text_vocab_size(self, config):
    return config.decoder.vocab_size + config.decoder.additional_vocab_size

  def tokens_per_image(self, config):
    return 1  # the image's states enter through the gated layers, not the sequence

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

  def check_training_data(self, config, data, tokenizer):
    """The pipeline's image token is the model's, one token and one tile an image (image slots:
    `max_tiles` = `max_images`)."""
    token = tokenizer.token_to_id(data.image_token)
    if token != config.image_token_id:
      raise ValueError(f"data.image_token {data.image_token!r} is id {token} in the tokenizer, but "
                       f"model.image_token_id is {config.image_token_id}")
    side = config.vision.image_size
    if data.image.tile_size != (side, side) or (data.image.tokens_per_image or 0) != 1:
      raise ValueError(f"IDEFICS takes one {side}x{side} tile and one token an image: "
                       f"data.image_preset='idefics' with image_overrides.size={side}")
    if data.max_tiles != data.max_images:
      raise ValueError(f"data.max_tiles {data.max_tiles} must equal data.max_images "
                       f"{data.max_images}: an image is one tile")

  def train_forward(self, module, params, batch, rng=None, head_loss=None):
    """A training batch (`train_images`): text arrays and image slots; which image each token
    sees follows from the image tokens."""
    rows = batch["input_ids"].shape[0]
    images = train_images(module.config, batch, rows)
    out = module.apply({"params": params}, batch["input_ids"], images, batch["positions"],
                       batch["attention_mask"], batch.get("segment_ids"), head_loss=head_loss)
    return out.logits if head_loss is None else out.loss

  def abstract_train_batch(self, config, data, sds):
    """Rows own `max_tiles` image slots of one tile each (`mmjax.data.pipeline`)."""
    slots = int(data["batch_size"]) * int(data.get("max_tiles", 1))
    v = config.vision
    return {**text_train_batch(data, sds), "image_mask": sds((slots,), jnp.bool_),
            "pixel_values": sds((slots, v.image_size, v.image_size, v.num_channels),
                                jnp.float32)}

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """The language model per text token (its self-attention over the row); the gated layers
    per text token, their keys / values per image state and their cross-attention over the
    row's image states; the tower per patch of every real image (`image_mask`); the resampler
    per image (keys / values over the image's tokens and latents, the rest per latent). A frozen
    part costs 4 per parameter when a part trains (gradients pass through it), else 2."""
    rows, length = np.shape(batch["input_ids"])
    images = int(np.sum(batch["image_mask"])) if "image_mask" in batch else \
        np.shape(batch["pixel_values"])[0]
    trains = lambda *names: any(n in trainable for n in names)
    anything = 4 if trainable else 2
    per_lm = 6 if trains("decoder", "language_model") else anything
    per_gated = 6 if trains("decoder", "gated_cross") else anything
    v, d, r = config.vision, config.decoder, config.resampler
    states = r.num_latents if r is not None else v.num_positions  # per image
    dec = dict(params["decoder"])
    gated = [slot for name, seg in dec.items() if name.startswith("layers")
             for key, slot in seg.items() if key.startswith("gated_cross_")]
    gated_kv = sum(fl.count_params({k: g["attn"][k] for k in ("k", "v")}) for g in gated)
    gated_rest = fl.count_params(gated) - gated_kv
    tables = () if d.tie_embeddings else ("embed", "embed_additional")  # gathers (tied: heads)
    lm = fl.count_params({k: x for k, x in dec.items() if k not in tables}) - \
        gated_kv - gated_rest
    tokens = rows * length
    n_gated = len(d.cross_attention_layers)
    on = "decoder" in attention
    width = d.num_heads * d.head_dim
    self_products = 2 * width * tokens * (d.num_layers - n_gated) * length
    cross_products = 2 * width * tokens * n_gated * images * states // max(rows, 1)
    flops = (per_lm * (lm * tokens + self_products * on)
             + per_gated * (gated_rest * tokens + gated_kv * images * states
                            + cross_products * on))
    per = {name: fl.per_param(name, trainable, self.components) for name in self.components}
    if images and "encoder" in params:
      patches = images * v.num_positions
      products = 2 * v.num_layers * v.hidden_size * v.num_positions * patches
      flops += fl.encoder_flops(params["encoder"], patches, products * ("encoder" in attention),
                                per["encoder"])
    if images and "connector" in params:
      layers = params["connector"]["layers"]
      kv = fl.count_params({k: layers["attn"][k] for k in ("k", "v")})
      context = v.num_positions + r.num_latents  # keys: the image's tokens and the latents
      products = 2 * r.depth * r.num_heads * r.head_dim * r.num_latents * context
      flops += per["connector"] * images * (
          kv * context + (fl.count_params(params["connector"]) - kv) * r.num_latents + products)
    return float(flops)

  def flop_depths(self, model):
    """The tower in layers, the decoder in repeats of its group (a gated layer and
    `cross_layer_interval` text layers), so that a shallow copy keeps the layout."""
    interval = int(model.get("cross_layer_interval", 1))
    return {"vision": int(model["vision"]["num_layers"]),
            "decoder": int(model["decoder"]["num_layers"]) // interval}

  def with_depths(self, model, depths):
    interval = int(model.get("cross_layer_interval", 1))
    for name, depth in depths.items():
      model[name]["num_layers"] = depth * (interval if name == "decoder" else 1)


FAMILIES = (IdeficsFamily(),)

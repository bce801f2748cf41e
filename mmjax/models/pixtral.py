"""Pixtral (transformers: a `llava` whose vision tower is `pixtral`) and Mistral3 (`mistral3`):
the Pixtral tower over every image at its own size in one packed sequence, LLaVA's projector
(Mistral3: RMSNorm and a 2x2 patch merger before it), a Mistral decoder.

The processor lays each image out as `[IMG]` x columns + `[IMG_BREAK]` per row, the last one
`[IMG_END]`; only the `[IMG]` placeholders take features (one per patch, or per merged block),
in order, so any number of images per row and text-only rows mix in one batch. The host cuts
the processor's padded `pixel_values` into the packed sequence (`packed_images`).

The family is chosen from the vision config too: a `llava` config.json whose
`vision_config.model_type` is `pixtral` is claimed by the `pixtral` family (`claims_hf`).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.projector import Projector, ProjectorConfig
from mmjax.connectors.spatial_merger import SpatialMerger, SpatialMergerConfig, merge_index
from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import Decoder
from mmjax.encoders.pixtral_vit import (PixtralVisionConfig, PixtralVisionTransformer,
                                        pack_images, patch_grids)
from mmjax.models import flops as fl
from mmjax.models.family import Family
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.host_images import HostImagesFamily, HostImagesModule
from mmjax.models.inputs import text_train_batch
from mmjax.models.llava import LlavaConfig
from mmjax.nn.rope import RopeConfig

PROCESSOR_KEYS = ("pixel_values", "image_sizes")

# `pack_images`'s arrays (+ 'merge_index' [M, k*k] with a patch merger); in training, rows of
# them (`[B, N, ...]`) and 'token_index' [B, T, k*k] (every position's patches, see
# `train_images`).
PackedImages = dict


@dataclasses.dataclass(frozen=True)
class PixtralConfig(LlavaConfig):
  """LLaVA's config with a Pixtral tower (`vision: PixtralVisionConfig`); every patch of the
  chosen layers is a feature ('full' selection: Pixtral has no class token)."""

  vision: PixtralVisionConfig  # (re-declared for the type: checkpoints rebuild it by its hints)

  def __post_init__(self):
    super().__post_init__()
    if self.feature_select != "full":
      raise ValueError("Pixtral has no class token: vision_feature_select_strategy must be "
                       f"'full', got {self.feature_select!r}")

  @classmethod
  def vision_from_hf(cls, vision_config, **execution):
    return PixtralVisionConfig.from_hf(vision_config, **execution)

  @property
  def merge_size(self) -> int:
    """Patches merged per side before the decoder (1: none)."""
    return 1

  @property
  def downsample(self) -> int:
    """Pixels per decoder token per side (the processor's `patch_size * spatial_merge_size`)."""
    return self.vision.patch_size * self.merge_size

  @property
  def tokens_per_image(self) -> None:
    """None: an image's tokens depend on its size (`tokens_for`)."""
    return None

  def tokens_for(self, height: int, width: int) -> int:
    """`[IMG]` placeholders of an image of (height, width) pixels as the processor resized it."""
    return (height // self.downsample) * (width // self.downsample)

  def to_hf(self) -> dict[str, Any]:
    out = super().to_hf()
    out.pop("image_seq_length")  # the count varies with the image size
    return out


@dataclasses.dataclass(frozen=True)
class Mistral3Config(PixtralConfig):
  """Pixtral's config with Mistral3's projector: RMSNorm (with the decoder's eps, as transformers
  takes it) and a learned merge of each `spatial_merge_size`^2 block of patches before LLaVA's
  MLP."""

  spatial_merge_size: int = 2

  def __post_init__(self):
    super().__post_init__()
    if len(self.feature_layers) != 1:  # transformers' norm and merger take one layer's width
      raise ValueError(f"Mistral3 reads one vision feature layer, got {list(self.feature_layers)}")
    if self.spatial_merge_size < 1:
      raise ValueError(f"spatial_merge_size must be >= 1, got {self.spatial_merge_size}")

  @property
  def merge_size(self) -> int:
    return self.spatial_merge_size

  @property
  def merger(self) -> SpatialMergerConfig:
    return SpatialMergerConfig(self.projector, self.spatial_merge_size, self.decoder.rms_norm_eps)

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "Mistral3Config":
    """Reads a transformers `Mistral3Config` dict (config.json)."""
    defaults = dict(vision_feature_select_strategy="full", multimodal_projector_bias=False,
                    vision_feature_layer=-1, tie_word_embeddings=True)
    base = PixtralConfig.from_hf({**defaults, **cfg}, **execution)
    return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(PixtralConfig)},
               spatial_merge_size=int(cfg.get("spatial_merge_size", 2)))

  def to_hf(self) -> dict[str, Any]:
    out = super().to_hf()
    out.pop("vision_feature_select_strategy")  # Mistral3 has no selection: every patch
    return {**out, "architectures": ["Mistral3ForConditionalGeneration"],
            "model_type": "mistral3", "spatial_merge_size": self.spatial_merge_size}


def packed_images(config: PixtralConfig, pixel_values, image_sizes) -> PackedImages | None:
  """The processor's `pixel_values [I, C, H, W]` (padded to the batch's largest image) and
  `image_sizes [I, 2]` (each image's resized (height, width); absent: the whole padded size, as
  transformers assumes) -> the model's packed images, or None without images."""
  if pixel_values is None or np.shape(pixel_values)[0] == 0:
    return None
  shape = np.shape(pixel_values)
  if image_sizes is None:
    image_sizes = np.tile([shape[-2:]], (shape[0], 1))
  images = pack_images(pixel_values, image_sizes, config.vision.patch_size)
  if config.merge_size > 1:
    grids = patch_grids(image_sizes, config.vision.patch_size)
    images["merge_index"] = merge_index(grids, config.merge_size)
  return images


def num_features(images: PackedImages | None) -> int:
  if images is None:
    return 0
  if "merge_index" in images:
    return int(np.shape(images["merge_index"])[0])
  return int(np.shape(images["patches"])[0])


def check_image_placeholders(config: PixtralConfig, input_ids, images: PackedImages | None):
  """`PlaceholderMismatchError` unless the `[IMG]` placeholders take exactly the images'
  features (concrete `input_ids` only; a training batch's layout is checked by the pipeline)."""
  if images is not None and "token_index" in images:
    return
  check_placeholders(input_ids, config.image_token_id, num_features(images))


class Pixtral(HostImagesModule):
  """Pixtral tower, projector (Mistral3: norm + patch merger + MLP), Llama-family decoder."""

  config: PixtralConfig

  def setup(self):
    cfg = self.config
    self.encoder = PixtralVisionTransformer(cfg.vision)
    if cfg.merge_size > 1:
      self.connector = SpatialMerger(cfg.merger)
    else:
      self.connector = Projector(cfg.projector)
    self.decoder = Decoder(cfg.decoder)

  def image_features(self, images: PackedImages) -> jax.Array:
    """Packed images -> `[F, D_text]`: one feature per patch (per merged block), in order.
    Rows of packed patches (`patches [B, N, C, P, P]`, training batches) give `[B * N, D_text]`,
    row after row."""
    cfg = self.config
    layers = [layer % (cfg.vision.num_layers + 1) for layer in cfg.feature_layers]
    patches, positions, segments = images["patches"], images["positions"], images["segment_ids"]
    if patches.ndim == 4:  # one packed sequence
      patches, positions, segments = patches[None], positions[None], segments[None]
    hidden = self.encoder(patches, positions, segments,
                          num_layers=max(layers))["hidden_states"]  # [max+1, B, N, D_v]
    selected = jnp.concatenate([hidden[layer] for layer in layers], axis=-1)  # [B, N, D_v * L]
    selected = selected.reshape(-1, selected.shape[-1])  # [B * N, D_v * L]
    if cfg.merge_size > 1:
      return self.connector(selected, images["merge_index"])
    return self.connector(selected)

  def embed(self, input_ids: jax.Array, images: PackedImages | None) -> jax.Array:
    """Text embeddings `[B, T, D]` with the images' features in the `[IMG]` slots."""
    embeddings = self.decoder.embed(input_ids)
    check_image_placeholders(self.config, input_ids, images)
    if images is None:
      return embeddings
    slots = input_ids == self.config.image_token_id  # [B, T]
    if "token_index" in images:  # training batches: every position's patches `[B, T, k*k]`
      index = images["token_index"]
      features = self.image_features({**images, "merge_index": index.reshape(-1, index.shape[-1])})
      if self.config.merge_size == 1:  # one feature per patch slot: each position's own
        features = features[index.reshape(-1)]
      features = features.reshape(*index.shape[:2], -1).astype(embeddings.dtype)  # [B, T, D]
      return jnp.where(slots[..., None], features, embeddings)
    return merge_image_features(embeddings, slots, self.image_features(images))


def config_from_training(model: Mapping[str, Any]) -> PixtralConfig:
  """A training config's model section: `vision` (`PixtralVisionConfig`'s fields), `projector`,
  `decoder`, `image_token_id` and `feature_layers` (execution keys apply after)."""
  vision = PixtralVisionConfig(**dict(model["vision"]))
  decoder = dict(model["decoder"])
  decoder = DecoderConfig(rope=RopeConfig(**dict(decoder.pop("rope", {}))), **decoder)
  layers = tuple(model.get("feature_layers", (-1,)))
  projector = ProjectorConfig(in_features=vision.hidden_size * len(layers),
                              out_features=decoder.hidden_size, **dict(model["projector"]))
  return PixtralConfig(vision=vision, projector=projector, decoder=decoder,
                       image_token_id=int(model["image_token_id"]), feature_layers=layers,
                       feature_select="full")


def train_images(config: PixtralConfig, batch: Mapping[str, jax.Array]) -> PackedImages:
  """A training batch's rows of patch slots -> rows of packed images for the tower: `patches
  [B, S, C, P, P]`, `positions [B, S, 2]` (the host's, `pack_images`'), `segment_ids [B, S]` (the
  image of the row each slot holds, from `image_tiles`; -1 for padding slots) and `token_index
  [B, T, k*k]` (each position's block of patches as slots of the batch, from
  `image_token_source`: the patch merger's blocks, or with k = 1 each `[IMG]`'s patch)."""
  rows = batch["input_ids"].shape[0]
  patches = batch["pixel_values"]
  patches = patches.reshape(rows, -1, *patches.shape[1:])  # [B, S, C, P, P]
  slots = patches.shape[1]
  ends = jnp.cumsum(batch["image_tiles"].reshape(rows, -1), axis=-1)  # [B, M] patches so far
  image = jnp.sum(jnp.arange(slots)[None, :, None] >= ends[:, None, :], axis=-1)  # [B, S]
  valid = batch["image_mask"]
  segments = jnp.where(valid.reshape(rows, slots), image, -1)
  source = batch["image_token_source"][..., 0]  # [B, T, k*k] slot of the row, -1 off `[IMG]`
  index = jnp.where(source >= 0, source + slots * jnp.arange(rows)[:, None, None], 0)
  return {"patches": patches, "positions": batch["patch_positions"].reshape(rows, slots, 2),
          "segment_ids": segments.astype(jnp.int32), "token_index": index}


class PixtralFamily(HostImagesFamily):
  """transformers' `llava` checkpoints with a Pixtral tower (inference: logits, generation,
  chat mode) and training from the pipeline's `pixtral` samples (`train_images`)."""

  name = "pixtral"
  hf_model_types = ()  # a `llava` model_type: claimed through its vision config (claims_hf)
  config_cls = PixtralConfig
  module_cls = Pixtral
  table = "pixtral"
  processor_keys = PROCESSOR_KEYS

  flops_batch_keys = ("image_mask", "image_tiles")

  def config_from_training(self, model):
    return config_from_training(model)

  def check_training_data(self, config, data, tokenizer):
    """The pipeline's `pixtral` patches are the tower's (patch size, merge size) and its `[IMG]`
    is the model's image token."""
    token = tokenizer.token_to_id(data.image_token)
    if token != config.image_token_id:
      raise ValueError(f"data.image_token {data.image_token!r} is id {token} in the tokenizer, but "
                       f"model.image_token_id is {config.image_token_id}")
    image = data.image
    if image.family != "pixtral" or image.patch_size != config.vision.patch_size or \
        image.merge_size != config.merge_size:
      raise ValueError(f"{self.name} takes patches of {config.vision.patch_size} px merged "
                       f"{config.merge_size}x{config.merge_size}: data.image_preset='pixtral' with "
                       f"image_overrides patch_size={config.vision.patch_size} and merge_size="
                       f"{config.merge_size} (got {image.family!r}, patch_size "
                       f"{image.patch_size}, merge {image.merge_size})")

  def train_images(self, config, batch):
    return train_images(config, batch)

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """The decoder per token; the tower per real patch (`image_mask`), attending within its
    image (`image_tiles`: patches per image); the projector per patch."""
    rows, length = np.shape(batch["input_ids"])
    per = {name: fl.per_param(name, trainable, self.components) for name in self.components}
    flops = fl.decoder_flops(config.decoder, params.get("decoder", {}), rows, length,
                             per["decoder"], "decoder" in attention)
    counts = np.asarray(batch.get("image_tiles", np.zeros(0)), np.int64)
    patches = int(np.sum(batch["image_mask"])) if "image_mask" in batch else int(counts.sum())
    if "encoder" in params and patches:
      v = config.vision
      products = 2 * v.num_layers * v.hidden_size * int(np.sum(counts**2))
      flops += fl.encoder_flops(params["encoder"], patches, products * ("encoder" in attention),
                                per["encoder"])
    if "connector" in params and patches:  # (Mistral3: per merged block of patches)
      flops += per["connector"] * fl.count_params(params["connector"]) * (
          patches // config.merge_size**2)
    return float(flops)

  def aot_train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """Every patch slot counted, each row's slots one image (an upper bound of the attention)."""
    rows = batch["input_ids"].shape[0]
    slots = batch["pixel_values"].shape[0]
    filled = {"image_mask": np.ones(slots, bool),
              "image_tiles": np.full(rows, slots // rows, np.int64)}
    return self.train_flops(config, params, {**batch, **filled}, trainable, attention)

  def abstract_train_batch(self, config, data, sds):
    """Rows own `max_tiles` patch slots `[C, P, P]` with their positions, `max_images` images;
    every token its block of patches."""
    b, t, k = int(data["batch_size"]), int(data["max_length"]), config.merge_size
    slots = int(data["batch_size"]) * int(data.get("max_tiles", 1))
    images = int(data["batch_size"]) * int(data.get("max_images", 1))
    v = config.vision
    return {**text_train_batch(data, sds), "image_mask": sds((slots,), jnp.bool_),
            "pixel_values": sds((slots, v.num_channels, v.patch_size, v.patch_size), jnp.float32),
            "patch_positions": sds((slots, 2), jnp.int32),
            "image_tiles": sds((images,), jnp.int32),
            "image_token_source": sds((b, t, k * k, 2), jnp.int32)}

  def claims_hf(self, hf_config):
    vision = hf_config.get("vision_config") or {}
    return hf_config.get("model_type") == "llava" and vision.get("model_type") == "pixtral"

  def config_from_hf(self, hf_config, **execution):
    return self.config_cls.from_hf(hf_config, **execution)

  def hf_processor_config(self, config, image_token):
    """`PixtralProcessor`'s settings: it resizes to multiples of patch x merge and counts the
    placeholders from them."""
    return dict(processor_class="PixtralProcessor", image_token=image_token,
                patch_size=config.vision.patch_size, spatial_merge_size=config.merge_size)

  def example_inputs(self, config):
    """One row holding one image of 2x2 decoder tokens, and its packed patches."""
    side = 2 * config.downsample
    images = packed_images(config, np.zeros((1, config.vision.num_channels, side, side),
                                            np.float32), [[side, side]])
    ids = jnp.full((1, num_features(images)), config.image_token_id, jnp.int32)
    return ids, jax.tree.map(jnp.asarray, images), jnp.zeros_like(ids)

  def images_from_processor(self, config, inputs):
    """PixtralProcessor's `pixel_values [I, C, H, W]` and `image_sizes [I, 2]` -> the packed
    images (`packed_images`)."""
    return packed_images(config, inputs.get("pixel_values"), inputs.get("image_sizes"))

  def check_image_placeholders(self, config, input_ids, images):
    check_image_placeholders(config, input_ids, images)

  def example_processor_inputs(self, config, batch, length):
    """One square image of `vision.image_size` per row (the processor's largest)."""
    side = config.vision.image_size // config.downsample * config.downsample
    n = config.tokens_for(side, side)
    if length < n:
      raise ValueError(f"a prompt of {length} tokens cannot hold a {side}x{side} image's {n} "
                       "tokens")
    ids = np.zeros((batch, length), np.int32)
    ids[:, :n] = config.image_token_id
    return {"input_ids": ids, "image_sizes": np.tile([[side, side]], (batch, 1)),
            "pixel_values": np.zeros((batch, config.vision.num_channels, side, side), np.float32)}

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    from mmjax.generation.pixtral import PixtralPromptBuilder

    return PixtralPromptBuilder.from_checkpoint(ckpt_dir, config, chat_template)


class Mistral3Family(PixtralFamily):
  """transformers' `mistral3` checkpoints (Mistral Small 3.1): Pixtral with the patch merger;
  training from the pipeline's `pixtral` samples with `merge_size` = `spatial_merge_size`."""

  name = "mistral3"
  hf_model_types = ("mistral3",)
  config_cls = Mistral3Config
  table = "mistral3"

  def config_from_training(self, model):
    """Pixtral's model section (`config_from_training`) and `spatial_merge_size` (default 2)."""
    base = config_from_training(model)
    return Mistral3Config(**{f.name: getattr(base, f.name) for f in dataclasses.fields(PixtralConfig)},
                          spatial_merge_size=int(model.get("spatial_merge_size", 2)))

  def claims_hf(self, hf_config):
    return False  # found by its model_type


class PixtralVision(nn.Module):
  config: PixtralVisionConfig

  def setup(self):
    self.encoder = PixtralVisionTransformer(self.config)

  def __call__(self, patches, positions, segment_ids):
    return self.encoder(patches, positions, segment_ids)


class PixtralVisionFamily(Family):
  """The Pixtral tower alone (`PixtralVisionModel`: hidden states through the Python API)."""

  name = "pixtral_vision"
  hf_model_types = ("pixtral",)
  config_cls = PixtralVisionConfig
  module_cls = PixtralVision
  table = "pixtral_vision"
  components = ("encoder",)
  stacks = {"encoder": ""}

  def config_from_hf(self, hf_config, **execution):
    return PixtralVisionConfig.from_hf(hf_config, **execution)

  def decoder_config(self, config):
    return None

  def example_inputs(self, config):
    p = config.patch_size
    images = pack_images(np.zeros((1, config.num_channels, p, p), np.float32), [[p, p]], p)
    return tuple(jnp.asarray(images[k])[None] for k in ("patches", "positions", "segment_ids"))


FAMILIES = (PixtralFamily(), Mistral3Family(), PixtralVisionFamily())

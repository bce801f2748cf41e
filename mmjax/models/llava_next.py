"""LLaVA-NeXT (LLaVA-1.6): LLaVA's tower and projector on every AnyRes tile, the tiles re-laid
as one feature grid, unpadded, and a learned `image_newline` after every row.

Each image is a base view and a grid of tiles at the pinpoint resolution
`mmjax.data.preprocess.anyres` chose; its features are the base view's, then the grid's rows
with the padding cut off (as transformers' `unpad_image` rounds) and `image_newline` ending each
row. The layout depends only on the images' original sizes, so it is computed on the host
(`feature_layout`) as indices into the tiles' features, and the model gathers them: any number
of images per row, of any sizes, and text-only rows mix in one batch.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.preprocess.anyres import feature_sources, select_best_resolution, unpadded_grid
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.host_images import HostImagesFamily, HostImagesModule
from mmjax.models.inputs import text_train_batch
from mmjax.models.llava import Llava, LlavaConfig, config_from_dict
from mmjax.models.tiled_family import tile_flops

DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
PROCESSOR_KEYS = ("pixel_values", "image_sizes")

# {'tiles': [N, H, W, C] float32, 'index': [F] int32} (see `feature_layout`); in training
# 'token_index' [B, T] (the row of each position, see `LlavaNextFamily.train_images`) replaces
# 'index'.
AnyResImages = dict


@dataclasses.dataclass(frozen=True)
class LlavaNextConfig(LlavaConfig):
  """LLaVA's config (`tokens_per_image` is one tile's features, transformers' `image_seq_length`)
  and the `(height, width)` resolutions an image's tile grid may take."""

  grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "grid_pinpoints",
                       tuple((int(h), int(w)) for h, w in self.grid_pinpoints))
    side = self.vision.image_size
    for h, w in self.grid_pinpoints:
      if h <= 0 or w <= 0 or h % side or w % side:
        raise ValueError(f"image_grid_pinpoint {[h, w]} is not a positive multiple of the vision "
                         f"tower's image_size {side} in both sides")
    if self.feature_select == "full" and self.vision.class_token:
      raise ValueError("LLaVA-NeXT lays each tile's features out as a patch grid: with a class "
                       "token (CLIP) vision_feature_select_strategy must be 'default'")

  @property
  def tile_grid(self) -> int:
    """Feature rows (and columns) of one tile."""
    return self.vision.grid

  def grid_shape(self, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of tiles for an image of (height, width)."""
    best_h, best_w = select_best_resolution(height, width, self.grid_pinpoints)
    side = self.vision.image_size
    return best_h // side, best_w // side

  def tokens_for(self, height: int, width: int) -> int:
    """Placeholder tokens of one image: base view, unpadded grid, a newline per grid row."""
    rows, cols = self.grid_shape(height, width)
    g = self.tile_grid
    _, kept_rows, _, kept_cols = unpadded_grid(height, width, rows * g, cols * g)
    return g * g + kept_rows * kept_cols + kept_rows

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "LlavaNextConfig":
    """Reads a transformers `LlavaNextConfig` dict (config.json)."""
    llava = LlavaConfig.from_hf(cfg, **execution)
    pinpoints = cfg.get("image_grid_pinpoints") or DEFAULT_PINPOINTS
    return cls(**{f.name: getattr(llava, f.name) for f in dataclasses.fields(LlavaConfig)},
               grid_pinpoints=tuple(tuple(p) for p in pinpoints))

  def to_hf(self) -> dict[str, Any]:
    """transformers' `LlavaNextConfig` dict (`from_hf` reads it back)."""
    return {**super().to_hf(), "architectures": ["LlavaNextForConditionalGeneration"],
            "model_type": "llava_next",
            "image_grid_pinpoints": [list(p) for p in self.grid_pinpoints]}


def feature_layout(config: LlavaNextConfig, image_sizes) -> tuple[list[int], np.ndarray]:
  """Tiles per image and `index [F]`: for each placeholder, in order, the row of
  `concat(tile features [N * g * g, D], image_newline [1, D])` it takes.

  `image_sizes [I, 2]` are the originals' (height, width), as the processor gives them. Tile `t`
  of image `i` (0 the base view, then the grid row-major) holds features `(o_i + t) * g*g + ...`
  with `o_i` the tiles of the images before it.
  """
  g = config.tile_grid
  per_tile = g * g
  sizes = np.asarray(image_sizes, np.int64).reshape(-1, 2)
  counts = [1 + int(np.prod(config.grid_shape(int(h), int(w)))) for h, w in sizes]
  newline = sum(counts) * per_tile  # the appended newline's row
  index, first = [], 0
  for (h, w), n in zip(sizes, counts):
    source = feature_sources(int(h), int(w), g, config.vision.image_size, config.grid_pinpoints)
    tile, within = source[:, 0], source[:, 1]
    index.append(np.where(tile >= 0, (first + tile) * per_tile + within, newline))
    first += n
  flat = np.concatenate(index) if index else np.zeros((0,), np.int64)
  return counts, flat.astype(np.int32)


def anyres_images(config: LlavaNextConfig, pixel_values, image_sizes) -> AnyResImages | None:
  """The processor's `pixel_values [I, P, C, H, W]` (tiles padded to P per image) and
  `image_sizes [I, 2]` -> the model's images: each image's real tiles, NHWC, and the layout."""
  if pixel_values is None or np.shape(pixel_values)[0] == 0:
    return None
  pixels = np.asarray(pixel_values, np.float32)
  if pixels.ndim != 5:
    raise ValueError(f"pixel_values must be [images, tiles, channels, height, width] as "
                     f"LlavaNextProcessor makes them, got shape {pixels.shape}")
  if image_sizes is None:
    raise KeyError("LLaVA-NeXT inputs with pixel_values need image_sizes [images, 2]")
  sizes = np.asarray(image_sizes).reshape(-1, 2)
  if sizes.shape[0] != pixels.shape[0]:
    raise ValueError(f"image_sizes has {sizes.shape[0]} rows for {pixels.shape[0]} images in "
                     "pixel_values")
  counts, index = feature_layout(config, sizes)
  for i, n in enumerate(counts):
    if n > pixels.shape[1]:
      size = tuple(int(x) for x in sizes[i])
      raise ValueError(f"image {i} of size {size} takes {n} tiles (base view + grid) but "
                       f"pixel_values holds {pixels.shape[1]} per image")
  tiles = np.concatenate([pixels[i, :n] for i, n in enumerate(counts)])  # [N, C, H, W]
  return {"tiles": np.transpose(tiles, (0, 2, 3, 1)), "index": index}


def check_image_placeholders(config: LlavaNextConfig, input_ids, images: AnyResImages | None):
  """`PlaceholderMismatchError` unless the placeholders take exactly the images' features
  (concrete `input_ids` only; a training batch's `token_index` is checked by the pipeline)."""
  if images is not None and "token_index" in images:
    return
  features = 0 if images is None else int(np.shape(images["index"])[0])
  check_placeholders(input_ids, config.image_token_id, features)


class LlavaNext(HostImagesModule, Llava):
  """`Llava` with `image_newline [D]` and the AnyRes layout of image features."""

  def setup(self):
    super().setup()
    d = self.config.decoder.hidden_size
    self.image_newline = self.param(
        "image_newline", jax.nn.initializers.normal(d ** -0.5), (d,),
        jnp.dtype(self.config.projector.param_dtype))

  def embed(self, input_ids: jax.Array, images: AnyResImages | None) -> jax.Array:
    """Text embeddings with every image's laid-out features in the placeholder slots."""
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)  # [B, T, D]
    check_image_placeholders(cfg, input_ids, images)
    if images is None:
      return embeddings
    features = self.image_features(images["tiles"])  # [N, g*g, D]
    flat = jnp.concatenate([features.reshape(-1, features.shape[-1]),
                            self.image_newline[None].astype(features.dtype)])  # [N*g*g + 1, D]
    slots = input_ids == cfg.image_token_id  # [B, T]
    if "token_index" in images:  # training batches: every position's row of `flat` (`[B, T]`)
      gathered = flat[images["token_index"]].astype(embeddings.dtype)  # [B, T, D]
      return jnp.where(slots[..., None], gathered, embeddings)
    return merge_image_features(embeddings, slots, flat[images["index"]])


def config_from_training(model: Mapping[str, Any]) -> LlavaNextConfig:
  """A training config's model section: LLaVA's (`mmjax.models.llava.config_from_dict`) and
  `grid_pinpoints` (the `(height, width)` tile grids an image may take)."""
  llava = config_from_dict(model)
  return LlavaNextConfig(**{f.name: getattr(llava, f.name) for f in dataclasses.fields(LlavaConfig)},
                         grid_pinpoints=tuple(model.get("grid_pinpoints", DEFAULT_PINPOINTS)))


class LlavaNextFamily(HostImagesFamily):
  """transformers' `llava_next` checkpoints (inference: logits, generation, chat mode) and
  training from the pipeline's `anyres` samples (`train_images`)."""

  name = "llava_next"
  hf_model_types = ("llava_next",)
  config_cls = LlavaNextConfig
  module_cls = LlavaNext
  table = "llava_next"
  components = ("encoder", "connector", "image_newline", "decoder")
  processor_keys = PROCESSOR_KEYS
  flops_batch_keys = ("image_mask",)

  def config_from_hf(self, hf_config, **execution):
    return LlavaNextConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_training(model)

  def check_training_data(self, config, data, tokenizer):
    """The pipeline's `anyres` tiles are the tower's, and its layout the model's: tile side,
    patch size and pinpoints agree; its image token is the model's."""
    token = tokenizer.token_to_id(data.image_token)
    if token != config.image_token_id:
      raise ValueError(f"data.image_token {data.image_token!r} is id {token} in the tokenizer, but "
                       f"model.image_token_id is {config.image_token_id}")
    image, v = data.image, config.vision
    if image.family != "anyres" or image.tile_size != (v.image_size, v.image_size) or \
        image.patch_size != v.patch_size or image.grid_pinpoints != config.grid_pinpoints:
      raise ValueError(
          f"LLaVA-NeXT takes AnyRes tiles of {v.image_size} px in patches of {v.patch_size} on "
          f"the pinpoints {[list(p) for p in config.grid_pinpoints]}: data.image_preset="
          f"'llava_next' with image_overrides shortest_edge / crop_size {v.image_size}, patch_size "
          f"{v.patch_size} and grid_pinpoints as the model's (got {image.family!r}, "
          f"{image.tile_size}, {image.patch_size}, {[list(p) for p in image.grid_pinpoints]})")

  def train_images(self, config, batch):
    """The batch's tiles (`pixel_values [B*S, H, W, C]`, row b owning slots [b*S, (b+1)*S)) and
    `image_token_source [B, T, ..., 2]` (each token's tile slot in its row and feature in the
    tile, slot -1 for a newline; the host's `feature_sources`) -> `{'tiles', 'token_index'}`:
    each position's row(s) of `concat(tile features, image_newline)` (`[B, T, ...]`)."""
    tiles = batch["pixel_values"]
    rows = batch["input_ids"].shape[0]
    slots, per_tile = tiles.shape[0] // rows, config.tile_grid**2
    source = batch["image_token_source"]
    first = slots * jnp.arange(rows).reshape(rows, *[1] * (source.ndim - 2))  # [B, 1, ...]
    tile = source[..., 0] + first  # [B, T, ...] slot in the batch
    newline = tiles.shape[0] * per_tile
    index = jnp.where(source[..., 0] >= 0, tile * per_tile + source[..., 1], newline)
    return {"tiles": tiles, "token_index": index}

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """As LLaVA's per real tile (`tile_flops`): every tile is one tower pass whose
    `tokens_per_image` features go through the projector."""
    return tile_flops(self.components, config, params, batch, trainable, attention)

  def abstract_train_batch(self, config, data, sds):
    """Rows own `max_tiles` tiles `[H, W, C]`; every token its feature's source."""
    b, t = int(data["batch_size"]), int(data["max_length"])
    tiles, v = b * int(data.get("max_tiles", 1)), config.vision
    return {**text_train_batch(data, sds), "image_mask": sds((tiles,), jnp.bool_),
            "pixel_values": sds((tiles, v.image_size, v.image_size, v.num_channels), jnp.float32),
            "image_token_source": sds((b, t, 2), jnp.int32)}

  def hf_processor_config(self, config, image_token):
    """`LlavaNextProcessor`'s settings: it counts an image's tokens from the patch size, less
    the class token for the 'default' feature selection."""
    return dict(processor_class="LlavaNextProcessor", image_token=image_token,
                patch_size=config.vision.patch_size,
                num_additional_image_tokens=int(config.vision.class_token),
                vision_feature_select_strategy=config.feature_select)

  def example_inputs(self, config):
    """One row holding one image of the first pinpoint's size, and its tiles."""
    h, w = config.grid_pinpoints[0]
    v = config.vision
    counts, index = feature_layout(config, [[h, w]])
    tiles = jnp.zeros((counts[0], v.image_size, v.image_size, v.num_channels), jnp.float32)
    ids = jnp.full((1, index.shape[0]), config.image_token_id, jnp.int32)
    return ids, {"tiles": tiles, "index": jnp.asarray(index)}, jnp.zeros_like(ids)

  def images_from_processor(self, config, inputs):
    """LlavaNextProcessor's `pixel_values [I, P, C, H, W]` and `image_sizes [I, 2]` -> each
    image's real tiles and their feature layout (`anyres_images`)."""
    return anyres_images(config, inputs.get("pixel_values"), inputs.get("image_sizes"))

  def check_image_placeholders(self, config, input_ids, images):
    check_image_placeholders(config, input_ids, images)

  def example_processor_inputs(self, config, batch, length):
    """One image per row, of the first pinpoint's size (its whole grid, no padding)."""
    h, w = config.grid_pinpoints[0]
    n = config.tokens_for(h, w)
    if length < n:
      raise ValueError(f"a prompt of {length} tokens cannot hold a {h}x{w} image's {n} tokens")
    ids = np.zeros((batch, length), np.int32)
    ids[:, :n] = config.image_token_id
    tiles = 1 + int(np.prod(config.grid_shape(h, w)))
    v = config.vision
    return {"input_ids": ids, "image_sizes": np.tile([[h, w]], (batch, 1)),
            "pixel_values": np.zeros((batch, tiles, v.num_channels, v.image_size, v.image_size),
                                     np.float32)}

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    from mmjax.generation.llava_next import LlavaNextPromptBuilder

    return LlavaNextPromptBuilder.from_checkpoint(ckpt_dir, config, chat_template)


FAMILIES = (LlavaNextFamily(),)

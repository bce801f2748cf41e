"""LLaVA-OneVision: LLaVA-NeXT's tower, projector and `image_newline` (a SigLIP tower and a Qwen2
decoder in the released checkpoints), with three ways of laying features out:

* an image alone in its row: AnyRes as LLaVA-NeXT (base view, unpadded grid, a newline per row),
  the grid shrunk bilinearly when it exceeds `anyres_max_N` tiles' worth of features;
* an image sharing its row (`batch_num_images > 1`): its one base view and one newline;
* a video (`pixel_values_videos`): every frame's features pooled 2x2 bilinearly, one newline after
  the last frame, in the `<video>` placeholders.

The host computes where each placeholder's features come from (`mmjax.models.onevision_layout`)
and the model gathers and mixes them, so any mix of images, videos and text-only rows runs in one
batch. Training batches carry that layout per token (`image_token_source [B, T, 4, 2]`,
`image_token_weights [B, T, 4]`, from the pipeline's `onevision` samples), fixed in shape, for
the `<image>` and the `<video>` tokens alike (a video's frames are tiles of the row).
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.preprocess import onevision
from mmjax.models import llava_next
from mmjax.models import onevision_layout as layout
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.llava_next import LlavaNext, LlavaNextConfig, LlavaNextFamily

PROCESSOR_KEYS = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")
# transformers' LlavaOnevisionConfig defaults (config.json may leave them out)
HF_DEFAULTS = dict(image_token_index=151646, video_token_index=151647,
                   vision_feature_select_strategy="full", vision_feature_layer=-1,
                   vision_aspect_ratio="anyres_max_9",
                   image_grid_pinpoints=[list(p) for p in onevision.DEFAULT_PINPOINTS])

# {'tiles': [N, H, W, C] float32, 'image_index' / 'video_index': [F, 4] int32,
#  'image_weights' / 'video_weights': [F, 4] float32} (see `onevision_layout`); in training
# 'token_index' / 'token_weights' [B, T, 4] (every position's mix, `LlavaOnevisionFamily
# .train_images`) replace them.
OnevisionImages = dict


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig(LlavaNextConfig):
  """LLaVA-NeXT's config, the video placeholder and the `anyres_max_N` feature budget."""

  video_token_id: int = HF_DEFAULTS["video_token_index"]
  vision_aspect_ratio: str = HF_DEFAULTS["vision_aspect_ratio"]

  def __post_init__(self):
    super().__post_init__()
    onevision.max_patches(self.vision_aspect_ratio)  # a readable value

  @property
  def max_tiles(self) -> int:
    return onevision.max_patches(self.vision_aspect_ratio)

  def tokens_for(self, height: int, width: int, multi: bool = False) -> int:
    """Placeholders of one image (`multi`: it shares its row with other images)."""
    return onevision.tokens_for(height, width, self.tile_grid, self.grid_pinpoints,
                             self.vision.image_size, self.max_tiles, multi)

  def video_tokens(self, frames: int) -> int:
    return onevision.video_tokens(frames, self.tile_grid)

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "LlavaOnevisionConfig":
    """Reads a transformers `LlavaOnevisionConfig` dict (config.json)."""
    cfg = {**HF_DEFAULTS, **cfg}
    next_cfg = LlavaNextConfig.from_hf(cfg, **execution)
    return cls(**{f.name: getattr(next_cfg, f.name) for f in dataclasses.fields(LlavaNextConfig)},
               video_token_id=int(cfg["video_token_index"]),
               vision_aspect_ratio=cfg["vision_aspect_ratio"])

  def to_hf(self) -> dict[str, Any]:
    """transformers' `LlavaOnevisionConfig` dict (`from_hf` reads it back)."""
    out = {**super().to_hf(), "architectures": ["LlavaOnevisionForConditionalGeneration"],
           "model_type": "llava_onevision", "video_token_index": self.video_token_id,
           "image_token_index": self.image_token_id,
           "vision_aspect_ratio": self.vision_aspect_ratio}
    for key in ("image_token_id", "image_seq_length"):  # not LlavaOnevisionConfig's
      out.pop(key, None)
    return out


def onevision_images(config: LlavaOnevisionConfig, inputs: Mapping[str, Any]) -> OnevisionImages | None:
  """LlavaOnevisionProcessor's arrays -> the model's images: every image's real tiles then every
  video frame (NHWC), and where each placeholder takes its features (`onevision_layout`).

  `pixel_values [I, P, C, H, W]` (tiles zero-padded to P), `image_sizes [I, 2]`,
  `batch_num_images [B']` (images per sample that has any; absent: every image alone),
  `pixel_values_videos [V, F, C, H, W]`.
  """
  pixels, videos = inputs.get("pixel_values"), inputs.get("pixel_values_videos")
  tiles, sizes, multi = [], np.zeros((0, 2), np.int64), []
  if pixels is not None and np.shape(pixels)[0]:
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim != 5:
      raise ValueError(f"pixel_values must be [images, tiles, channels, height, width] as "
                       f"LlavaOnevisionProcessor makes them, got shape {pixels.shape}")
    if inputs.get("image_sizes") is None:
      raise KeyError("LLaVA-OneVision inputs with pixel_values need image_sizes [images, 2]")
    sizes = np.asarray(inputs["image_sizes"]).reshape(-1, 2)
    if sizes.shape[0] != pixels.shape[0]:
      raise ValueError(f"image_sizes has {sizes.shape[0]} rows for {pixels.shape[0]} images in "
                       "pixel_values")
    multi = _shares_row(inputs.get("batch_num_images"), pixels.shape[0])
  if videos is not None:
    videos = np.asarray(videos, np.float32)
    if videos.ndim != 5:
      raise ValueError(f"pixel_values_videos must be [videos, frames, channels, height, width], "
                       f"got shape {videos.shape}")
  frames = [] if videos is None else [videos.shape[1]] * videos.shape[0]
  if not multi and not frames:
    return None
  counts, (image_index, image_weights), (video_index, video_weights) = layout.feature_layout(
      sizes, multi, frames, config.tile_grid, config.grid_pinpoints, config.vision.image_size,
      config.max_tiles)
  for i, n in enumerate(counts):
    if n > pixels.shape[1]:
      size = tuple(int(x) for x in sizes[i])
      raise ValueError(f"image {i} of size {size} takes {n} tiles (base view + grid) but "
                       f"pixel_values holds {pixels.shape[1]} per image")
    tiles.append(pixels[i, :n])
  if frames:
    tiles.append(videos.reshape(-1, *videos.shape[2:]))
  tiles = np.concatenate(tiles)  # [N, C, H, W]
  return {"tiles": np.transpose(tiles, (0, 2, 3, 1)), "image_index": image_index,
          "image_weights": image_weights, "video_index": video_index,
          "video_weights": video_weights}


def _shares_row(batch_num_images, images: int) -> list[bool]:
  """Per image: whether its sample holds other images (then it takes no AnyRes tiles)."""
  if batch_num_images is None:
    return [False] * images
  counts = [int(n) for n in np.asarray(batch_num_images).reshape(-1)]
  if sum(counts) != images or min(counts, default=1) < 1:
    raise ValueError(f"batch_num_images {counts} does not count the {images} images of "
                     "pixel_values")
  return [n != 1 for n in counts for _ in range(n)]


def check_image_placeholders(config: LlavaOnevisionConfig, input_ids, images):
  """`PlaceholderMismatchError` unless the image and the video placeholders take exactly their
  features (concrete `input_ids` only; a training batch's layout is checked by the pipeline)."""
  if images is not None and "token_index" in images:
    return
  for kind, token in (("image", config.image_token_id), ("video", config.video_token_id)):
    features = 0 if images is None else int(np.shape(images[f"{kind}_index"])[0])
    check_placeholders(input_ids, token, features)


def mix_features(flat: jax.Array, index: jax.Array, weights: jax.Array) -> jax.Array:
  """`flat [R, D]` rows mixed as `onevision_layout` lays them out: `index [F, 4]`, `weights
  [F, 4]` (w0, w1, h0, h1) -> `(w0 x0 + w1 x1) h0 + (w0 x2 + w1 x3) h1` `[F, D]`, the order of
  torch's bilinear kernel (width inside, height outside)."""
  x = flat[index]  # [F, 4, D]
  w = weights.astype(flat.dtype)[:, :, None]  # [F, 4, 1]
  return ((x[:, 0] * w[:, 0] + x[:, 1] * w[:, 1]) * w[:, 2]
          + (x[:, 2] * w[:, 0] + x[:, 3] * w[:, 1]) * w[:, 3])


class LlavaOnevision(LlavaNext):
  """`LlavaNext` whose placeholders take bilinear mixes of tile features (`onevision_layout`),
  images in the `<image>` and videos in the `<video>` placeholders."""

  def embed(self, input_ids: jax.Array, images: OnevisionImages | None) -> jax.Array:
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)  # [B, T, D]
    check_image_placeholders(cfg, input_ids, images)
    if images is None:
      return embeddings
    features = self.image_features(images["tiles"])  # [N, g*g, D]
    flat = jnp.concatenate([features.reshape(-1, features.shape[-1]),
                            self.image_newline[None].astype(features.dtype)])  # [N*g*g + 1, D]
    if "token_index" in images:  # training batches: every image / video position's mix
      index, weights = images["token_index"], images["token_weights"]
      mixed = mix_features(flat, index.reshape(-1, 4), weights.reshape(-1, 4))  # [B*T, D]
      mixed = mixed.reshape(*index.shape[:2], -1).astype(embeddings.dtype)  # [B, T, D]
      media = (input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)  # [B, T]
      return jnp.where(media[..., None], mixed, embeddings)
    for kind, token in (("image", cfg.image_token_id), ("video", cfg.video_token_id)):
      index = images[f"{kind}_index"]
      if index.shape[0] == 0:
        continue
      mixed = mix_features(flat, index, images[f"{kind}_weights"])  # [F, D]
      embeddings = merge_image_features(embeddings, input_ids == token, mixed)
    return embeddings


def config_from_training(model: Mapping[str, Any]) -> LlavaOnevisionConfig:
  """A training config's model section: LLaVA-NeXT's (`llava_next.config_from_training`),
  `vision_aspect_ratio` ('anyres_max_N') and `video_token_id`."""
  base = llava_next.config_from_training(model)
  return LlavaOnevisionConfig(
      **{f.name: getattr(base, f.name) for f in dataclasses.fields(LlavaNextConfig)},
      video_token_id=int(model.get("video_token_id", HF_DEFAULTS["video_token_index"])),
      vision_aspect_ratio=model.get("vision_aspect_ratio", HF_DEFAULTS["vision_aspect_ratio"]))


class LlavaOnevisionFamily(LlavaNextFamily):
  """transformers' `llava_onevision` checkpoints (inference: logits, generation, chat mode) and
  training from the pipeline's `onevision` samples (images and videos; `train_images`)."""

  name = "llava_onevision"
  hf_model_types = ("llava_onevision",)
  config_cls = LlavaOnevisionConfig
  module_cls = LlavaOnevision
  table = "llava_onevision"
  processor_keys = PROCESSOR_KEYS

  def config_from_hf(self, hf_config, **execution):
    return LlavaOnevisionConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_training(model)

  def check_training_data(self, config, data, tokenizer):
    """The pipeline's `onevision` views are the tower's and its layout the model's: tile side,
    patch size, pinpoints and `anyres_max_N` agree; its image token is the model's, and its video
    token too where the tokenizer has one (samples with videos need it)."""
    token = tokenizer.token_to_id(data.image_token)
    if token != config.image_token_id:
      raise ValueError(f"data.image_token {data.image_token!r} is id {token} in the tokenizer, but "
                       f"model.image_token_id is {config.image_token_id}")
    try:
      video = tokenizer.token_to_id(data.video.token)
    except KeyError:  # no video token: no sample may hold a video (the pipeline says so)
      video = None
    if video is not None and video != config.video_token_id:
      raise ValueError(f"data.video.token {data.video.token!r} is id {video} in the tokenizer, but "
                       f"model.video_token_id is {config.video_token_id}")
    image, v = data.image, config.vision
    if image.family != "onevision" or image.tile_size != (v.image_size, v.image_size) or \
        image.patch_size != v.patch_size or image.grid_pinpoints != config.grid_pinpoints or \
        image.max_tiles != config.max_tiles:
      raise ValueError(
          f"LLaVA-OneVision takes views of {v.image_size} px in patches of {v.patch_size} on the "
          f"pinpoints {[list(p) for p in config.grid_pinpoints]}, {config.vision_aspect_ratio}: "
          f"data.image_preset='llava_onevision' with image_overrides size {v.image_size}, "
          f"patch_size {v.patch_size}, grid_pinpoints as the model's and max_tiles "
          f"{config.max_tiles} (got {image.family!r}, {image.tile_size}, {image.patch_size}, "
          f"{[list(p) for p in image.grid_pinpoints]}, max_tiles {image.max_tiles})")

  def train_images(self, config, batch):
    """LLaVA-NeXT's (`image_token_source [B, T, 4, 2]`: the four rows of each position's mix)
    and the mix's `image_token_weights [B, T, 4]`."""
    return {**super().train_images(config, batch), "token_weights": batch["image_token_weights"]}

  def abstract_train_batch(self, config, data, sds):
    """LLaVA-NeXT's, every token with four sources and their weights."""
    b, t = int(data["batch_size"]), int(data["max_length"])
    return {**super().abstract_train_batch(config, data, sds),
            "image_token_source": sds((b, t, 4, 2), jnp.int32),
            "image_token_weights": sds((b, t, 4), jnp.float32)}

  def hf_processor_config(self, config, image_token):
    """`LlavaOnevisionProcessor`'s settings: one tile's features count an image's tokens."""
    return dict(processor_class="LlavaOnevisionProcessor", image_token=image_token,
                num_image_tokens=config.vision.num_positions,
                vision_feature_select_strategy=config.feature_select,
                vision_aspect_ratio=config.vision_aspect_ratio)

  def example_inputs(self, config):
    """One row holding one image of the first pinpoint's size, and its tiles."""
    h, w = config.grid_pinpoints[0]
    images = self.example_processor_inputs(config, 1, config.tokens_for(h, w))
    out = onevision_images(config, images)
    return (jnp.asarray(images["input_ids"]), jax.tree.map(jnp.asarray, out),
            jnp.zeros(images["input_ids"].shape, jnp.int32))

  def images_from_processor(self, config, inputs):
    return onevision_images(config, inputs)

  def check_image_placeholders(self, config, input_ids, images):
    check_image_placeholders(config, input_ids, images)

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    from mmjax.generation.llava_onevision import OnevisionPromptBuilder

    return OnevisionPromptBuilder.from_checkpoint(ckpt_dir, config, chat_template)


FAMILIES = (LlavaOnevisionFamily(),)

"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the packed native-resolution ViT, the 2x2 patch merger, and
the Llama-family decoder with M-RoPE (3-D positions), plus Qwen3-VL's DeepStack.

Image and video features replace their placeholder tokens (embedding fusion, as LLaVA). Qwen3-VL
also adds features of a few ViT layers to the hidden states after the first decoder layers
(DeepStack: the decoder's `layer_inputs`). Positions are `[3, B, T]` from `qwen_vl_positions`.
"""

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.decoders.config import DecoderConfig, decoder_to_hf
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.qwen_vit import QwenVisionConfig, QwenVisionTransformer
from mmjax.encoders.qwen_vit_inputs import (PAD_SEGMENT, num_merged_tokens, packed_vision_inputs,
                                            row_vision_inputs)
from mmjax.models import flops as fl
from mmjax.models.family import Family, Unsupported
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.inputs import text_train_batch
from mmjax.models.qwen_vl_positions import mm_token_types, rope_index
from mmjax.nn.multihead import KVCache
from mmjax.nn.rope import RopeConfig

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_DEFAULT_MROPE = {"qwen2_vl": (16, 24, 24), "qwen2_5_vl": (16, 24, 24), "qwen3_vl": (24, 20, 20)}
VisionInputs = Mapping[str, jax.Array]  # {'patches': [N, C*T*P*P], + packed_vision_inputs arrays}


def _text_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The text settings: `text_config` (transformers v5 saves), or the root (v4 / hub configs)."""
  text = cfg.get("text_config")
  if isinstance(text, Mapping) and "hidden_size" in text:
    return dict(text)
  return {k: v for k, v in cfg.items() if k not in ("vision_config", "text_config")}


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  vision: QwenVisionConfig
  decoder: DecoderConfig
  image_token_id: int
  video_token_id: int
  model_type: str = "qwen2_vl"

  @property
  def merge_size(self) -> int:
    return self.vision.spatial_merge_size

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "QwenVLConfig":
    """Reads a transformers Qwen2-VL / Qwen2.5-VL / Qwen3-VL config.json dict."""
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"not a Qwen-VL config: model_type {model_type!r}; known: {MODEL_TYPES}")
    vision = QwenVisionConfig.from_hf(model_type, cfg["vision_config"], **execution)
    text = _text_config(cfg)
    if text.get("use_sliding_window"):
      raise ValueError("Qwen-VL text configs with use_sliding_window=true are not supported")
    text["model_type"] = "qwen3" if model_type == "qwen3_vl" else "qwen2"
    if model_type != "qwen3_vl":
      text.pop("head_dim", None)  # Qwen2-VL attention always uses hidden_size // heads
    tie = cfg.get("tie_word_embeddings") or text.get("tie_word_embeddings", False)
    decoder = DecoderConfig.from_hf(text, tie_embeddings=bool(tie), **execution)
    rope = decoder.rope
    rope = dataclasses.replace(
        rope, mrope_section=rope.mrope_section or _DEFAULT_MROPE[model_type],
        mrope_interleaved=model_type == "qwen3_vl")  # Qwen3-VL always interleaves
    decoder = dataclasses.replace(decoder, rope=rope)
    if vision.out_hidden_size != decoder.hidden_size:
      raise ValueError(f"vision out_hidden_size {vision.out_hidden_size} != text hidden_size "
                       f"{decoder.hidden_size}")
    return cls(vision=vision, decoder=decoder, image_token_id=int(cfg.get("image_token_id", 151655)),
               video_token_id=int(cfg.get("video_token_id", 151656)), model_type=model_type)

  def to_hf(self) -> dict[str, Any]:
    """transformers' Qwen2-VL / Qwen2.5-VL / Qwen3-VL config dict (`from_hf` reads it back)."""
    d = self.decoder
    if self.model_type != "qwen3_vl" and d.head_dim != d.hidden_size // d.num_heads:
      raise ValueError(f"{self.model_type} attention has head_dim hidden_size // num_heads = "
                       f"{d.hidden_size // d.num_heads}, not {d.head_dim}")
    text = dict(decoder_to_hf(d), model_type=f"{self.model_type}_text")
    if self.model_type != "qwen3_vl":
      text.pop("head_dim")
    architecture = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}
    return dict(architectures=[f"{architecture[self.model_type]}ForConditionalGeneration"],
                model_type=self.model_type, vision_config=self.vision.to_hf(), text_config=text,
                image_token_id=self.image_token_id, video_token_id=self.video_token_id,
                tie_word_embeddings=d.tie_embeddings)


def config_from_dict(model: Mapping[str, Any]) -> QwenVLConfig:
  """A training config's `model` section (`family`, `vision`, `decoder` (+ `rope`), token ids,
  execution keys) -> QwenVLConfig, e.g. `configs/tiny/qwen2_vl.py`."""
  execution = {k: model[k] for k in ("dtype", "param_dtype", "remat_policy", "attention_backend")
               if model.get(k) is not None}
  kind = model["family"]
  if kind not in MODEL_TYPES:
    raise ValueError(f"model.family {kind!r} is not a Qwen-VL family {MODEL_TYPES}")
  vision = dict(model["vision"])
  for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
    if key in vision:
      vision[key] = tuple(vision[key])
  decoder = dict(model["decoder"])
  rope = dict(decoder.pop("rope", {}))
  rope["mrope_section"] = tuple(rope.get("mrope_section") or _DEFAULT_MROPE[kind])
  rope["mrope_interleaved"] = kind == "qwen3_vl"
  decoder = DecoderConfig(rope=RopeConfig(**rope), model_type="qwen3" if kind == "qwen3_vl" else
                          "qwen2", **decoder, **execution)
  return QwenVLConfig(vision=QwenVisionConfig(kind=kind, out_hidden_size=decoder.hidden_size,
                                              **vision, **execution),
                      decoder=decoder, image_token_id=int(model["image_token_id"]),
                      video_token_id=int(model.get("video_token_id", model["image_token_id"] + 1)),
                      model_type=kind)


def vision_batch(pixel_values, grid_thw, vision: QwenVisionConfig,
                 num_patches: int | None = None) -> dict[str, np.ndarray]:
  """HF's flattened `pixel_values [N, C*T*P*P]` + `grid_thw [I, 3]` -> the encoder's inputs."""
  pixels = np.asarray(pixel_values, np.float32)
  inputs = packed_vision_inputs(grid_thw, merge_size=vision.spatial_merge_size, window=vision.window,
                                pos_embed_side=vision.pos_embed_side, num_patches=num_patches)
  n = int((inputs["segment_ids"] != PAD_SEGMENT).sum())
  if pixels.ndim != 2 or pixels.shape[0] != n:
    raise ValueError(f"pixel values {pixels.shape} do not match grid_thw "
                     f"{np.asarray(grid_thw).tolist()} ({n} patches of {vision.patch_features})")
  if num_patches is not None:
    pixels = np.concatenate([pixels, np.zeros((num_patches - n, pixels.shape[1]), np.float32)])
  return {"patches": pixels, **inputs}


class QwenVL(nn.Module):
  config: QwenVLConfig

  def setup(self):
    self.encoder = QwenVisionTransformer(self.config.vision)
    self.decoder = Decoder(self.config.decoder)

  def _features(self, vision: VisionInputs | None):
    """-> (`features [F, D]`, `deepstack [K, F, D] | None`, `valid [F] | None`, real feature
    count or None). Rows of patches (`[B, N, ...]`, training batches) are flattened in row order
    and `valid` marks the features of real patches; a single packed sequence ends with its
    padding, which no placeholder reaches."""
    if vision is None or vision["patches"].shape[-2] == 0:
      return None, None, None, 0
    out = self.encoder(vision["patches"], {k: v for k, v in vision.items() if k != "patches"})
    segments = vision["segment_ids"]
    blocks = self.config.merge_size**2
    real = None if isinstance(segments, jax.core.Tracer) else \
        int(np.sum(np.asarray(segments) != PAD_SEGMENT)) // blocks
    features, deepstack, valid = out["features"], out.get("deepstack"), None
    if segments.ndim == 2:
      d = features.shape[-1]
      features = features.reshape(-1, d)  # [B * N/4, D]
      if deepstack is not None:
        deepstack = deepstack.reshape(deepstack.shape[0], -1, d)  # [K, B * N/4, D]
      valid = (segments != PAD_SEGMENT).reshape(-1, blocks)[:, 0]
    return features, deepstack, valid, real

  def embed(self, input_ids: jax.Array, images: VisionInputs | None = None,
            videos: VisionInputs | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Text embeddings with image and video features in their placeholder slots `[B, T, D]`, and
    the DeepStack additions `[K, B, T, D]` (Qwen3-VL with visual inputs; else None)."""
    cfg = self.config
    x = self.decoder.embed(input_ids)
    layer_inputs = None
    for token, vision in ((cfg.image_token_id, images), (cfg.video_token_id, videos)):
      features, deepstack, valid, real = self._features(vision)
      if real is not None:
        check_placeholders(input_ids, token, real)
      if features is None:
        continue
      slots = input_ids == token
      x = merge_image_features(x, slots, features, valid)
      if deepstack is not None:
        zeros = jnp.zeros_like(x)
        merge = lambda f: merge_image_features(zeros, slots, f, valid)
        add = jax.vmap(merge)(deepstack)  # [K, B, T, D]
        layer_inputs = add if layer_inputs is None else layer_inputs + add
    return x, layer_inputs

  def __call__(
      self,
      input_ids: jax.Array,
      images: VisionInputs | None,
      videos: VisionInputs | None,
      positions: jax.Array,
      attention_mask: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int = 0,
      head_loss: HeadLoss | None = None,
  ) -> DecoderOutput:
    """`input_ids [B, T]`, packed `images` / `videos` (see `vision_batch`; or rows of them, see
    `train_forward`), `positions [3, B, T]`.

    Returns the decoder's output (`DecoderOutput`: float32 logits `[B, T, V]`, the updated
    cache, the last hidden states, or `head_loss`'s result when given).
    """
    x, layer_inputs = self.embed(input_ids, images, videos)
    return self.decoder(x, positions, attention_mask, segment_ids, cache, cache_index,
                        layer_inputs=layer_inputs, head_loss=head_loss)


def example_inputs(cfg: QwenVLConfig):
  """Positional inputs for init / eval_shape: one row, one 2x2-merged image (4 patches)."""
  m = cfg.merge_size
  images = {k: jnp.asarray(v) for k, v in vision_batch(
      np.zeros((m * m, cfg.vision.patch_features), np.float32), [[1, m, m]], cfg.vision).items()}
  ids = jnp.asarray([[0, cfg.image_token_id]], jnp.int32)
  return ids, images, None, jnp.zeros((3, 1, 2), jnp.int32)


def positions_for(cfg: QwenVLConfig, input_ids, attention_mask=None, image_grid_thw=None,
                  video_grid_thw=None, mm_token_type_ids=None, second_per_grid_ts=None):
  """`[3, B, T]` M-RoPE positions and `[B, 1]` deltas for these processor arrays."""
  if mm_token_type_ids is None:
    mm_token_type_ids = mm_token_types(input_ids, cfg.image_token_id, cfg.video_token_id)
  return rope_index(input_ids, mm_token_type_ids, kind=cfg.model_type, merge_size=cfg.merge_size,
                    image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                    attention_mask=attention_mask, second_per_grid_ts=second_per_grid_ts,
                    tokens_per_second=cfg.vision.tokens_per_second)


PROCESSOR_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                  "mm_token_type_ids", "second_per_grid_ts")  # beside input_ids / attention_mask


def processor_inputs(cfg: QwenVLConfig, inputs: Mapping[str, np.ndarray]):
  """The arrays a Qwen-VL processor returns -> the module's inputs, checked on the host.

  `input_ids`, `attention_mask`, `pixel_values [N, C*T*P*P]` + `image_grid_thw`,
  `pixel_values_videos` + `video_grid_thw`, `mm_token_type_ids`, `second_per_grid_ts`
  (Qwen2.5-VL), optional `position_ids` (`[B, T]`, `[3, B, T]` or `[4, B, T]` with text positions
  first). Returns `(ids [B, T], mask [B, T], images, videos, positions [3, B, T])`: numpy arrays,
  `images` / `videos` as `vision_batch` gives them or None.
  """
  if "input_ids" not in inputs:
    raise KeyError(f"inputs lack 'input_ids' (have: {sorted(inputs)})")
  ids = np.asarray(inputs["input_ids"], np.int64)
  mask = inputs.get("attention_mask")
  mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)

  def batch(pixels_key, grid_key, token):
    if inputs.get(pixels_key) is None:
      check_placeholders(ids, token, 0)
      return None
    if inputs.get(grid_key) is None:
      raise KeyError(f"inputs have {pixels_key!r} but no {grid_key!r}")
    vision = vision_batch(inputs[pixels_key], inputs[grid_key], cfg.vision)
    check_placeholders(ids, token, num_merged_tokens(inputs[grid_key], cfg.merge_size))
    return vision

  images = batch("pixel_values", "image_grid_thw", cfg.image_token_id)
  videos = batch("pixel_values_videos", "video_grid_thw", cfg.video_token_id)
  positions = inputs.get("position_ids")
  if positions is None:
    positions, _ = positions_for(cfg, ids, mask, inputs.get("image_grid_thw"),
                                 inputs.get("video_grid_thw"), inputs.get("mm_token_type_ids"),
                                 inputs.get("second_per_grid_ts"))
  positions = np.asarray(positions, np.int32)
  if positions.ndim == 2:
    positions = np.broadcast_to(positions[None], (3, *positions.shape))
  elif positions.shape[0] == 4:
    positions = positions[1:]
  if positions.shape != (3, *ids.shape):
    raise ValueError(f"position_ids {np.shape(inputs.get('position_ids'))} do not match input_ids "
                     f"{ids.shape} (expected [B, T], [3, B, T] or [4, B, T])")
  return ids, mask, images, videos, positions


def forward_from_hf_inputs(cfg: QwenVLConfig, params,
                           inputs: Mapping[str, np.ndarray]) -> np.ndarray:
  """Logits for the arrays a Qwen-VL processor returns (see `processor_inputs`)."""
  ids, mask, images, videos, positions = processor_inputs(cfg, inputs)
  to_jax = lambda vision: None if vision is None else jax.tree.map(jnp.asarray, vision)
  logits = _compiled_logits(cfg)(params, jnp.asarray(ids, jnp.int32), to_jax(images),
                                 to_jax(videos), jnp.asarray(positions),
                                 jnp.asarray(mask, jnp.int32))
  return np.asarray(logits, np.float32)


@functools.lru_cache(maxsize=4)
def _compiled_logits(cfg: QwenVLConfig):
  """The forward's logits as one compiled program per config (frozen, hashable): about twice as
  fast on CPU as running the model op by op, even when every call has new shapes."""
  return jax.jit(lambda params, *args: QwenVL(cfg).apply({"params": params}, *args).logits)


def train_forward(module: QwenVL, params, batch: Mapping[str, jax.Array],
                  head_loss: HeadLoss | None = None) -> Any:
  """Logits `[B, T, V]` (the result of `head_loss` when given: `Decoder`) for a training batch of
  the data pipeline (`mmjax.data.pipeline`, the `qwen2_vl` image preset with `mrope`): rows of
  flattened patches `pixel_values [B*S, C*T*P*P]` with `image_grid_thw [B*M, 3]`,
  `mrope_positions [B, T, 3]` restarting per packed sample, `attention_mask` and `segment_ids`.
  Each row's patches are encoded on their own (frames never attend to each other) and its
  features fill its placeholders in order."""
  cfg = module.config
  if "mrope_positions" not in batch:
    raise ValueError("Qwen-VL training needs 3-D M-RoPE positions in the batch: set "
                     "data.mrope=True (with data.image_preset='qwen2_vl')")
  ids = batch["input_ids"]
  rows = ids.shape[0]
  pixels = batch["pixel_values"]
  patches = pixels.reshape(rows, -1, pixels.shape[-1])  # [B, S, C*T*P*P]
  if patches.shape[1] % cfg.merge_size**2:
    raise ValueError(f"data.max_tiles {patches.shape[1]} (patch slots per row) must be a multiple "
                     f"of {cfg.merge_size**2}, the patches one merged token takes")
  v = cfg.vision

  def vision_rows(patches, grid):  # [B, S, C*T*P*P], [B, M, 3]
    return {"patches": patches, **row_vision_inputs(
        grid, patches.shape[1], merge_size=v.spatial_merge_size, window=v.window,
        pos_embed_side=v.pos_embed_side)}

  images = vision_rows(patches, batch["image_grid_thw"].reshape(rows, -1, 3))
  videos = None
  if "pixel_values_videos" in batch:  # data.video: rows of video patches beside the images'
    video_patches = batch["pixel_values_videos"].reshape(rows, -1, pixels.shape[-1])
    videos = vision_rows(video_patches, batch["video_grid_thw"].reshape(rows, -1, 3))
  positions = jnp.moveaxis(batch["mrope_positions"], -1, 0)  # [3, B, T]
  out = module.apply({"params": params}, ids, images, videos, positions,
                     batch["attention_mask"], batch.get("segment_ids"), head_loss=head_loss)
  return out.logits if head_loss is None else out.loss


class QwenVLFamily(Family):
  """Qwen2-VL, Qwen2.5-VL or Qwen3-VL (one object per `model_type`)."""

  config_cls = QwenVLConfig
  module_cls = QwenVL
  table = "qwen_vl"
  processor_keys = PROCESSOR_KEYS
  flops_batch_keys = ("image_grid_thw", "video_grid_thw")

  def __init__(self, kind: str):
    self.name = kind
    self.hf_model_types = (kind,)

  def config_from_hf(self, hf_config, **execution):
    return QwenVLConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_dict({**model, "family": self.name})

  def example_inputs(self, config):
    return example_inputs(config)

  def forward_from_hf_inputs(self, config, params, inputs):
    return forward_from_hf_inputs(config, params, inputs)

  def generation_adapter(self, config):
    from mmjax.generation.qwen_vl import QwenVLFusion

    return QwenVLFusion(self.build(config), config)

  chat_image_options = ("min_pixels", "max_pixels")

  def prompt_builder(self, ckpt_dir, config, chat_template=True, **image_options):
    from mmjax.generation.qwen_vl import QwenVLPromptBuilder

    return QwenVLPromptBuilder.from_checkpoint(ckpt_dir, config, chat_template, **image_options)

  def generation_pixels(self, config, inputs):
    return {k: inputs[k] for k in PROCESSOR_KEYS if k in inputs}  # the processor's arrays as are

  def example_processor_inputs(self, config, batch, length):
    """One square image per row, as large as half the prompt allows."""
    m = config.merge_size
    side = max(1, int((length // 2) ** 0.5))  # merged tokens per side
    ids = np.zeros((batch, length), np.int32)
    ids[:, :side * side] = config.image_token_id
    grid = np.tile([[1, side * m, side * m]], (batch, 1))
    patches = np.zeros((batch * (side * m)**2, config.vision.patch_features), np.float32)
    return {"input_ids": ids, "pixel_values": patches, "image_grid_thw": grid}

  def train_forward(self, module, params, batch, rng=None, head_loss=None):
    return train_forward(module, params, batch, head_loss)

  def image_token_mask(self, config, batch):
    ids = batch["input_ids"]
    return (ids == config.image_token_id) | (ids == config.video_token_id)

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """The decoder per token; the ViT per patch of the batch's grids (`image_grid_thw [M, 3]`,
    zero rows for unused slots), attending within its frame; the merger (and DeepStack
    mergers) per merged token."""
    rows, length = np.shape(batch["input_ids"])
    per = {name: fl.per_param(name, trainable, self.components) for name in self.components}
    text = fl.decoder_flops(config.decoder, params["decoder"], rows, length, per["decoder"],
                            "decoder" in attention)
    if "encoder" not in params:  # (the AOT count passes abstract grids and no encoder)
      return text
    grids = [np.asarray(batch[k], np.int64).reshape(-1, 3)  # images and videos alike
             for k in ("image_grid_thw", "video_grid_thw") if batch.get(k) is not None]
    grid = np.concatenate(grids) if grids else np.zeros((0, 3), np.int64)
    frames, per_frame = grid[:, 0], grid[:, 1] * grid[:, 2]
    patches = int(np.sum(frames * per_frame))
    if not patches:
      return text
    encoder = dict(params["encoder"])
    mergers = {k: encoder.pop(k) for k in ("merger", "deepstack") if k in encoder}
    v = config.vision
    products = 2 * v.num_layers * v.hidden_size * int(np.sum(frames * per_frame**2))
    merged = patches // config.merge_size**2
    vision = fl.encoder_flops(encoder, patches, products * ("encoder" in attention),
                              per["encoder"])
    return text + vision + per["encoder"] * fl.count_params(mergers) * merged

  def aot_train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """Every patch slot of the batch's budget counted, attention over the row's whole budget
    (an upper bound: images attend within themselves)."""
    rows = batch["input_ids"].shape[0]
    text = self.train_flops(config, {"decoder": params["decoder"]}, batch, trainable, attention)
    v = config.vision
    patches = batch["pixel_values"].shape[0]
    products = 2 * v.num_layers * v.hidden_size * (patches // rows) * patches
    per = fl.per_param("encoder", trainable, self.components)  # the merger is the encoder's
    return text + fl.encoder_flops(params["encoder"], patches, products * ("encoder" in attention),
                                   per)

  def abstract_train_batch(self, config, data, sds):
    """Rows own `max_tiles` flattened patches `[C * T * P * P]` (their patch budget),
    `max_images` grids and M-RoPE positions."""
    b, t = int(data["batch_size"]), int(data["max_length"])
    v = config.vision
    tiles, images = b * int(data.get("max_tiles", 1)), b * int(data.get("max_images", 1))
    return {**text_train_batch(data, sds), "image_mask": sds((tiles,), jnp.bool_),
            "pixel_values": sds((tiles, v.patch_features), jnp.float32),
            "image_grid_thw": sds((images, 3), jnp.int32),
            "mrope_positions": sds((b, t, 3), jnp.int32)}

  def kernel_attention_stacks(self, config):
    # The ViT masks frames and windows densely: it always attends through the einsum path.
    return ("decoder",) if config.decoder.attention_backend != "xla" else ()


FAMILIES = tuple(QwenVLFamily(kind) for kind in MODEL_TYPES)

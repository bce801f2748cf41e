"""Llama 3.2 Vision (`mllama`): a tiled vision tower, a linear projector, and a Llama decoder
whose cross-attention layers read the image states (the cross-attention kind of MLLM: image
tokens never enter the sequence; each image is one `<|image|>` token).

Images arrive as the processor makes them (`mmjax.data.preprocess.mllama`): `pixel_values
[B, I, T, H, W, C]` (NHWC here; the processor's NCHW is transposed at the boundary),
`aspect_ratio_ids [B, I]`, `aspect_ratio_mask [B, I, T]` and `cross_attention_mask [B, L, I, T]`
(which tiles each text token sees). The vision tower's output, projected, gives `I * T * S`
image states per row (S tokens per tile), in (image, tile, token) order.

Training batches carry no `cross_attention_mask`: it follows from the `<|image|>` positions as the
processor computes it (`cross_groups`): a token sees the images of the latest run of consecutive
image tokens at or before it, within its packed sample.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.projector import Projector, ProjectorConfig
from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.cross import CrossInputs
from mmjax.decoders.layout import plan_layers
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.mllama_vit import MllamaVisionConfig, MllamaVisionTransformer
from mmjax.models import flops as fl
from mmjax.models.family import Family
from mmjax.models.inputs import text_inputs, text_train_batch
from mmjax.nn.mask_spec import CrossMaskSpec
from mmjax.nn.masks import tile_cross_attention_mask
from mmjax.nn.rope import RopeConfig

PROCESSOR_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")
# transformers' MllamaTextModel embeds `vocab_size + 8` rows: the image token and reserved ids.
EXTRA_EMBEDDINGS = 8
Images = Mapping[str, jax.Array]  # the processor's image arrays (pixel_values NHWC)


@dataclasses.dataclass(frozen=True)
class MllamaConfig:
  vision: MllamaVisionConfig
  decoder: DecoderConfig
  image_token_id: int

  @property
  def projector(self) -> ProjectorConfig:
    return ProjectorConfig("linear", self.vision.output_dim, self.decoder.hidden_size,
                           use_bias=True, dtype=self.decoder.dtype,
                           param_dtype=self.decoder.param_dtype)

  @property
  def tokens_per_tile(self) -> int:
    return self.vision.num_positions

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "MllamaConfig":
    """Reads transformers' `MllamaConfig` (config.json)."""
    vision = MllamaVisionConfig.from_hf(cfg["vision_config"], **execution)
    text = dict(cfg["text_config"])
    layers = tuple(int(i) for i in (text.get("cross_attention_layers") or ()))
    decoder = DecoderConfig.from_hf({**text, "model_type": "llama", "attention_bias": False},
                                    tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                                    **execution)
    decoder = dataclasses.replace(decoder, cross_attention_layers=layers,
                                  extra_embeddings=EXTRA_EMBEDDINGS)
    token = cfg.get("image_token_id", cfg.get("image_token_index"))
    if token is None:
      raise ValueError("the Mllama config has no image_token_index")
    if vision.vision_output_dim not in (None, vision.output_dim):
      raise ValueError(f"vision_output_dim {vision.vision_output_dim} differs from the tower's "
                       f"output {vision.output_dim} (hidden_size x (1 + intermediate layers))")
    return cls(vision=vision, decoder=decoder, image_token_id=int(token))

  def to_hf(self) -> dict[str, Any]:
    """transformers' `MllamaConfig` dict."""
    d = self.decoder
    text = dict(
        model_type="mllama_text_model", vocab_size=d.vocab_size, hidden_size=d.hidden_size,
        intermediate_size=d.intermediate_size, num_hidden_layers=d.num_layers,
        num_attention_heads=d.num_heads, num_key_value_heads=d.num_kv_heads,
        rms_norm_eps=d.rms_norm_eps, hidden_act=d.activation,
        max_position_embeddings=d.rope.max_position_embeddings,
        rope_parameters=d.rope.to_hf(), cross_attention_layers=list(d.cross_attention_layers),
        tie_word_embeddings=d.tie_embeddings)
    return dict(architectures=["MllamaForConditionalGeneration"], model_type="mllama",
                vision_config=self.vision.to_hf(), text_config=text,
                image_token_index=self.image_token_id)


def config_from_dict(model: Mapping[str, Any]) -> MllamaConfig:
  """A training config's `model` section (`vision`, `decoder` (+ `rope`,
  `cross_attention_layers`), `image_token_id`) -> MllamaConfig, e.g. `configs/tiny/mllama.py`."""
  vision = dict(model["vision"])
  for key in ("intermediate_layers_indices", "supported_aspect_ratios"):
    if key in vision:
      vision[key] = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in vision[key])
  decoder = dict(model["decoder"])
  rope = RopeConfig(**dict(decoder.pop("rope", {})))
  decoder["cross_attention_layers"] = tuple(decoder.get("cross_attention_layers", ()))
  decoder.setdefault("extra_embeddings", EXTRA_EMBEDDINGS)
  tower = MllamaVisionConfig(**vision)
  if tower.vision_output_dim is None:  # spelled out, as transformers' config (and export) has it
    tower = dataclasses.replace(tower, vision_output_dim=tower.output_dim)
  return MllamaConfig(vision=tower, decoder=DecoderConfig(rope=rope, **decoder),
                      image_token_id=int(model["image_token_id"]))


def cross_groups(input_ids: jax.Array, image_token_id: int, segment_ids: jax.Array | None,
                 images: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Which images each text token sees, from the `<|image|>` positions, as MllamaProcessor's
  `get_cross_attention_token_mask` spans them: image k (the k-th image token of its row) is seen
  from its own token up to the next run of image tokens; consecutive image tokens form a run
  whose images are all seen after it. Packed samples (`segment_ids`) see only their own images.

  Returns `sees [B, L, I]` (exact, per image), and the `CrossMaskSpec` groups: `q_group [B, L]`
  (the token's latest run, -1 if none) and `image_group [B, I]` (each image's run; -1 for
  image slots past the row's image tokens).
  """
  b, length = input_ids.shape
  is_image = input_ids == image_token_id  # [B, L]
  starts = is_image & ~jnp.pad(is_image, ((0, 0), (1, 0)))[:, :-1]
  run = jnp.cumsum(starts, axis=1) - 1  # [B, L] the latest run at or before each token (-1)
  # Each image slot's token position: the row's image tokens in order.
  order = jnp.argsort(~is_image, axis=1, stable=True)[:, :images]  # [B, I]
  present = jnp.arange(images)[None] < jnp.sum(is_image, axis=1, keepdims=True)  # [B, I]
  image_run = jnp.where(present, jnp.take_along_axis(run, order, axis=1), -1)  # [B, I]
  q_group = run
  if segment_ids is not None:  # a run belongs to the sample of its first token
    positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    run_start = jax.lax.cummax(jnp.where(starts, positions, 0), axis=1)  # [B, L]
    same = jnp.take_along_axis(segment_ids, run_start, axis=1) == segment_ids
    q_group = jnp.where(same, run, -1)
  position = jnp.arange(length)[None, :, None]
  sees = ((image_run[:, None, :] == q_group[:, :, None]) & (q_group[:, :, None] >= 0)
          & (order[:, None, :] <= position))  # [B, L, I]
  return sees, q_group, image_run


class Mllama(nn.Module):
  config: MllamaConfig

  def setup(self):
    cfg = self.config
    self.encoder = MllamaVisionTransformer(cfg.vision)
    self.connector = Projector(cfg.projector)
    self.decoder = Decoder(cfg.decoder)

  def image_states(self, images: Images) -> jax.Array:
    """`pixel_values [B, I, T, H, W, C]`, `aspect_ratio_ids [B, I]`, `aspect_ratio_mask
    [B, I, T]` -> image states `[B, I*T*S, D]` (S tokens per tile)."""
    pixels = images["pixel_values"]
    b, i, t = pixels.shape[:3]
    out = self.encoder(pixels.reshape(b * i, *pixels.shape[2:]),
                       images["aspect_ratio_ids"].reshape(b * i),
                       images["aspect_ratio_mask"].reshape(b * i, t))  # [B*I, T, S, Dv]
    states = self.connector(out)  # [B*I, T, S, D]
    return states.reshape(b, -1, states.shape[-1])

  def cross_inputs(self, input_ids, images: Images, states, segment_ids=None) -> CrossInputs:
    """The cross-attention layers' inputs: from the processor's `cross_attention_mask
    [B, L, I, T]` (exact, dense), or, without one (training batches), from the image tokens
    (`cross_groups`): dense on the einsum path, a `CrossMaskSpec` for the splash kernel (which
    gives image tokens inside a run of consecutive ones the whole run's images)."""
    s = self.config.tokens_per_tile
    tiles = images["aspect_ratio_mask"].astype(bool)  # [B, I, T]
    b, i, t = tiles.shape
    if "cross_attention_mask" in images:
      per_tile = images["cross_attention_mask"].astype(bool)  # [B, L, I, T]
    else:
      sees, q_group, image_run = cross_groups(input_ids, self.config.image_token_id,
                                              segment_ids, i)
      if self.config.decoder.attention_backend != "xla":
        valid = jnp.repeat(tiles.reshape(b, i * t), s, axis=1)  # [B, I*T*S]
        k_group = jnp.where(valid, jnp.repeat(image_run, t * s, axis=1), -2)
        spec = CrossMaskSpec(q_group, k_group)
        return CrossInputs(states, spec, spec.sees_keys().astype(jnp.float32))
      per_tile = sees[..., None] & tiles[:, None]  # [B, L, I, T]
    row_mask = jnp.any(per_tile, axis=(2, 3)).astype(jnp.float32)  # [B, L]
    return CrossInputs(states, tile_cross_attention_mask(per_tile, s), row_mask)

  def __call__(
      self,
      input_ids: jax.Array,
      images: Images | None,
      positions: jax.Array,
      attention_mask: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: Any = None,
      cache_index: jax.Array | int = 0,
      head_loss: HeadLoss | None = None,
  ) -> DecoderOutput:
    """`input_ids [B, L]`, `images` (see the module docstring; None: text only, and the
    cross-attention layers are skipped as transformers skips them), `positions [B, L]`."""
    x = self.decoder.embed(input_ids)
    cross = None
    if images is not None:
      cross = self.cross_inputs(input_ids, images, self.image_states(images), segment_ids)
    return self.decoder(x, positions, attention_mask, segment_ids, cache, cache_index,
                        head_loss=head_loss, cross=cross)


def images_from_processor(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
  """The processor's image arrays (NCHW `pixel_values [B, I, T, C, H, W]`) -> the module's
  (NHWC), checked; None without images."""
  if inputs.get("pixel_values") is None:
    return None
  missing = [k for k in PROCESSOR_KEYS if inputs.get(k) is None]
  if missing:
    raise KeyError(f"inputs have 'pixel_values' but no {missing}")
  pixels = np.asarray(inputs["pixel_values"], np.float32)
  if pixels.ndim != 6:
    raise ValueError(f"pixel_values must be [batch, images, tiles, channels, height, width], "
                     f"got {pixels.shape}")
  b, i, t = pixels.shape[:3]
  arrays = {"pixel_values": np.transpose(pixels, (0, 1, 2, 4, 5, 3)),
            "aspect_ratio_ids": np.asarray(inputs["aspect_ratio_ids"], np.int32),
            "aspect_ratio_mask": np.asarray(inputs["aspect_ratio_mask"], np.int32),
            "cross_attention_mask": np.asarray(inputs["cross_attention_mask"], np.int32)}
  for key, shape in (("aspect_ratio_ids", (b, i)), ("aspect_ratio_mask", (b, i, t))):
    if arrays[key].shape != shape:
      raise ValueError(f"{key} {arrays[key].shape} does not match pixel_values {pixels.shape}")
  mask = arrays["cross_attention_mask"]
  if mask.ndim != 4 or mask.shape[0] != b or mask.shape[2:] != (i, t):
    raise ValueError(f"cross_attention_mask {mask.shape} does not match pixel_values "
                     f"{pixels.shape} (expected [batch, length, images, tiles])")
  return arrays


def check_image_tokens(input_ids: np.ndarray, image_token_id: int, images) -> None:
  """Every row holds as many `<|image|>` tokens as images (transformers' processor checks it);
  rows with fewer images than the batch's image slots have padding images; the cross-attention
  mask covers every token."""
  from mmjax.models.fusion import PlaceholderMismatchError

  if images is not None and images["cross_attention_mask"].shape[1] != np.shape(input_ids)[1]:
    raise ValueError(f"cross_attention_mask covers {images['cross_attention_mask'].shape[1]} "
                     f"tokens, input_ids {np.shape(input_ids)[1]}")
  counts = np.sum(np.asarray(input_ids) == image_token_id, axis=1)
  slots = 0 if images is None else images["aspect_ratio_ids"].shape[1]
  real = (np.zeros((len(counts), 0)) if images is None else
          np.asarray(images["aspect_ratio_ids"]) > 0)
  if np.any(counts > slots):
    raise PlaceholderMismatchError(
        f"image tokens and images do not match: rows hold {counts.tolist()} image tokens (id "
        f"{image_token_id}) but the batch has {slots} image slots per row")
  if images is not None and np.any(counts != np.sum(real, axis=1)):
    raise PlaceholderMismatchError(
        f"image tokens and images do not match: rows hold {counts.tolist()} image tokens (id "
        f"{image_token_id}) and {np.sum(real, axis=1).tolist()} images")


class MllamaFamily(Family):
  name = "mllama"
  hf_model_types = ("mllama",)
  config_cls = MllamaConfig
  module_cls = Mllama
  table = "mllama"
  # The Llama 3.2 Vision recipe trains the vision tower, the projector and the cross-attention
  # layers while the language model stays frozen: ("encoder", "connector", "cross_attention").
  parts = {"cross_attention": r"decoder/layers(_\d+)?/cross_\d+/.*",
           "language_model": r"decoder/(?!layers(_\d+)?/cross_\d+/).*"}
  processor_keys = PROCESSOR_KEYS
  flops_batch_keys = ("image_mask", "aspect_ratio_ids")

  def config_from_hf(self, hf_config, **execution):
    return MllamaConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_dict(model)

  def example_inputs(self, config):
    """One row with one image token and one image of one tile."""
    v = config.vision
    t = v.max_num_tiles
    images = {"pixel_values": jnp.zeros((1, 1, t, v.image_size, v.image_size, v.num_channels)),
              "aspect_ratio_ids": jnp.ones((1, 1), jnp.int32),
              "aspect_ratio_mask": jnp.zeros((1, 1, t), jnp.int32).at[..., 0].set(1)}
    ids = jnp.asarray([[config.image_token_id, 0]], jnp.int32)
    return ids, images, jnp.zeros((1, 2), jnp.int32)

  def tokens_per_image(self, config):
    return 1

  def forward_from_hf_inputs(self, config, params, inputs):
    """`input_ids`, `attention_mask`, `position_ids` (optional) and the MllamaProcessor's
    `pixel_values [B, I, T, C, H, W]`, `aspect_ratio_ids`, `aspect_ratio_mask`,
    `cross_attention_mask` -> float32 logits `[B, L, V]`."""
    input_ids, mask, positions = text_inputs(inputs)
    images = images_from_processor(inputs)
    check_image_tokens(np.asarray(input_ids), config.image_token_id, images)
    images = None if images is None else jax.tree.map(jnp.asarray, images)
    out = self.build(config).apply({"params": params}, input_ids, images, positions, mask)
    return np.asarray(out.logits, np.float32)

  def generation_adapter(self, config):
    from mmjax.generation.mllama import MllamaAdapter

    return MllamaAdapter(self.build(config), config)

  def generation_pixels(self, config, inputs):
    return images_from_processor(inputs)

  def example_processor_inputs(self, config, batch, length):
    v = config.vision
    t = v.max_num_tiles
    ids = np.zeros((batch, length), np.int32)
    ids[:, 0] = config.image_token_id
    mask = np.zeros((batch, length, 1, t), np.int32)
    mask[..., 0] = 1
    return {"input_ids": ids,
            "pixel_values": np.zeros((batch, 1, t, v.num_channels, v.image_size, v.image_size),
                                     np.float32),
            "aspect_ratio_ids": np.ones((batch, 1), np.int32),
            "aspect_ratio_mask": np.eye(1, t, dtype=np.int32)[None].repeat(batch, 0),
            "cross_attention_mask": mask}

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    from mmjax.generation.mllama import MllamaPromptBuilder

    return MllamaPromptBuilder.from_checkpoint(ckpt_dir, config, chat_template)

  def train_forward(self, module, params, batch, rng=None, head_loss=None):
    """A training batch (see `train_images`): text arrays and image slots. The
    cross-attention mask follows from the image tokens."""
    rows = batch["input_ids"].shape[0]
    images = train_images(module.config, batch, rows)
    out = module.apply({"params": params}, batch["input_ids"], images, batch["positions"],
                       batch["attention_mask"], batch.get("segment_ids"), head_loss=head_loss)
    return out.logits if head_loss is None else out.loss

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """The decoder per text token (cross-attention keys/values per image token instead), its
    self-attention over the row and cross-attention over the row's image states; the vision
    tower per padded tile token of every image slot with a real image (`image_mask`), attending
    over the image's tiles; the projector per image state."""
    rows, length = np.shape(batch["input_ids"])
    if "aspect_ratio_ids" in batch:  # the pipeline's and the processor's arrays
      images = int(np.sum(np.asarray(batch["aspect_ratio_ids"]) > 0))
    else:  # one tile per image slot (the shapes source)
      images = int(np.sum(batch["image_mask"]))
    per = {name: fl.per_param(name, trainable, self.components) for name in self.components}
    trains = lambda *names: any(n in trainable for n in names)
    # The language model's layers back-propagate to the cross-attention layers among them.
    per_lm = 6 if trains("decoder", "language_model") else (
        4 if trains("encoder", "connector", "cross_attention") else 2)
    per_cross = 6 if trains("decoder", "cross_attention") else per_lm
    v, d = config.vision, config.decoder
    tile_tokens = v.max_num_tiles * v.num_positions
    image_states = images * tile_tokens
    dec = dict(params["decoder"])
    cross = list(_cross_slots(dec))
    cross_kv = sum(fl.count_params({k: c["attn"][k] for k in ("k", "v")}) for c in cross)
    cross_rest = fl.count_params(cross) - cross_kv
    text_params = fl.count_params({k: x for k, x in dec.items() if k != "embed"}) - \
        cross_kv - cross_rest
    tokens = rows * length
    n_cross = len(d.cross_attention_layers)
    self_products = 2 * d.num_heads * d.head_dim * tokens * (d.num_layers - n_cross) * length
    cross_products = 2 * d.num_heads * d.head_dim * tokens * n_cross * image_states // max(rows, 1)
    on = "decoder" in attention
    flops = (per_lm * (text_params * tokens + self_products * on)
             + per_cross * (cross_rest * tokens + cross_kv * image_states + cross_products * on))
    if images and "encoder" in params:
      padded = images * v.max_num_tiles * v.padded_positions
      vit_products = 2 * (v.num_layers + v.num_global_layers) * v.hidden_size * \
          v.max_num_tiles * v.padded_positions * padded
      flops += fl.encoder_flops(params["encoder"], padded, vit_products * ("encoder" in attention),
                                per["encoder"])
    if images and "connector" in params:
      flops += per["connector"] * fl.count_params(params["connector"]) * image_states
    return float(flops)

  def kernel_attention_stacks(self, config):
    """Only the decoder's: the tower's mask over an image's tiles is dense (no splash mask), so
    its attention runs through XLA's einsum path (and is counted) whatever the backend."""
    return tuple(s for s in super().kernel_attention_stacks(config) if s != "encoder")

  def flop_depths(self, model):
    """The local and global vision stacks in layers, the decoder in repeats of its group of
    layers (Llama-3.2-11B-Vision: 8 groups of 5), so that a shallow copy keeps the layout."""
    v, d = model["vision"], model["decoder"]
    plan = plan_layers(int(d["num_layers"]), tuple(d.get("cross_attention_layers", ())))
    groups = plan[0].repeats if len(plan) == 1 else int(d["num_layers"])
    return {"vision": int(v["num_layers"]), "vision_global": int(v["num_global_layers"]),
            "decoder": groups}

  def with_depths(self, model, depths):
    v, d = model["vision"], model["decoder"]
    for name, depth in depths.items():
      if name == "vision":  # keep as many intermediate layers (the projector's width)
        old = int(v["num_layers"])
        v["intermediate_layers_indices"] = tuple(
            min(i % old, depth - 1) for i in v.get("intermediate_layers_indices", (3, 7, 15, 23, 30)))
        v["num_layers"] = depth
      elif name == "vision_global":
        v["num_global_layers"] = depth
      elif name == "decoder":
        cross = tuple(d.get("cross_attention_layers", ()))
        plan = plan_layers(int(d["num_layers"]), cross)
        period = len(plan[0].kinds) if len(plan) == 1 else 1
        d["num_layers"] = depth * period
        d["cross_attention_layers"] = tuple(i for i in cross if i < depth * period)

  def abstract_train_batch(self, config, data, sds):
    """As the pipeline lays it out: rows own `max_images` image slots of `max_num_tiles` tiles,
    the tiles flat (`mmjax.data.pipeline`)."""
    v = config.vision
    slots = int(data["batch_size"]) * int(data.get("max_images", 1))
    t = v.max_num_tiles
    return {**text_train_batch(data, sds), "image_mask": sds((slots * t,), jnp.bool_),
            "pixel_values": sds((slots * t, v.image_size, v.image_size, v.num_channels),
                                jnp.float32),
            "aspect_ratio_ids": sds((slots,), jnp.int32),
            "aspect_ratio_mask": sds((slots, t), jnp.int32)}


def _cross_slots(decoder_params: dict):
  """The parameters of every cross-attention slot of a decoder's segments."""
  for name, seg in decoder_params.items():
    if name.startswith("layers") and isinstance(seg, dict):
      yield from (p for slot, p in seg.items() if slot.startswith("cross_"))


def train_images(config: MllamaConfig, batch, rows: int) -> dict[str, jax.Array]:
  """The module's image arrays from a training batch's image slots, one of:

  * the pipeline's (`image_preset="mllama"`): `pixel_values [B*M*T, H, W, C]` with every image
    slot owning T = `max_num_tiles` tiles, `image_mask [B*M*T]`, `aspect_ratio_ids [B*M]`
    (0: an unused slot) and `aspect_ratio_mask [B*M, T]`;
  * one tile per image (the shapes source): `pixel_values [B*M, H, W, C]`, `image_mask [B*M]`.
  """
  v = config.vision
  t = v.max_num_tiles
  pixels = batch["pixel_values"]
  ids = batch.get("aspect_ratio_ids")
  if ids is None:  # one tile per image: the remaining tiles are padding
    slots = pixels.shape[0]
    pixels = jnp.pad(pixels[:, None], ((0, 0), (0, t - 1), (0, 0), (0, 0), (0, 0)))
    real = batch["image_mask"].astype(bool)
    ids = jnp.where(real, 1, 0).astype(jnp.int32)
    tiles = jnp.zeros((slots, t), jnp.int32)
  else:
    slots = ids.shape[0]
    if pixels.shape[0] != slots * t:
      raise ValueError(f"{pixels.shape[0]} tiles for {slots} image slots of {t} tiles: the data's "
                       f"image preset must have max_tiles = the vision tower's {t}")
    pixels = pixels.reshape(slots, t, *pixels.shape[1:])
    tiles = batch["aspect_ratio_mask"]
  tiles = tiles.at[:, 0].set(1)  # as the processor marks padding images: no empty tile mask
  per_row = slots // rows
  return {"pixel_values": pixels.reshape(rows, per_row, *pixels.shape[1:]),
          "aspect_ratio_ids": ids.reshape(rows, per_row),
          "aspect_ratio_mask": tiles.reshape(rows, per_row, t)}


FAMILIES = (MllamaFamily(),)

"""LLaVA / LLaVA-1.5: a ViT, an MLP projector, and a Llama-family decoder.

Image features replace the embeddings of the image-placeholder tokens (embedding fusion); any
number of images per row and text-only rows mix freely in one batch.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.connectors.projector import Projector, ProjectorConfig
from mmjax.decoders.config import DecoderConfig, decoder_to_hf
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.vit import VisionConfig, VisionTransformer
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.tiled_family import TiledImageFamily
from mmjax.nn.multihead import KVCache
from mmjax.nn.rope import RopeConfig

SELECT_STRATEGIES = ("default", "full")


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
  vision: VisionConfig
  projector: ProjectorConfig
  decoder: DecoderConfig
  image_token_id: int
  feature_layers: tuple[int, ...] = (-2,)  # hidden-state indices, concatenated along features
  feature_select: str = "default"  # 'default' drops the first (class) token, 'full' keeps it

  def __post_init__(self):
    if self.feature_select not in SELECT_STRATEGIES:
      raise ValueError(f"unknown feature_select {self.feature_select!r}; known: {SELECT_STRATEGIES}")
    n = self.vision.num_layers + 1
    for layer in self.feature_layers:
      if not -n <= layer < n:
        raise ValueError(f"feature layer {layer} out of range for {self.vision.num_layers} layers")

  @property
  def tokens_per_image(self) -> int:
    return self.vision.num_positions - (1 if self.feature_select == "default" else 0)

  @classmethod
  def vision_from_hf(cls, vision_config: Mapping[str, Any], **execution) -> Any:
    """The vision tower's config from config.json's `vision_config` (a CLIP or SigLIP tower)."""
    return VisionConfig.from_hf(vision_config, **execution)

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "LlavaConfig":
    """Reads a transformers `LlavaConfig` dict (config.json); `execution` sets dtypes/remat."""
    vision = cls.vision_from_hf(cfg["vision_config"], **execution)
    text_cfg = cfg["text_config"]
    tie = cfg.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings", False))
    decoder = DecoderConfig.from_hf(text_cfg, tie_embeddings=bool(tie), **execution)
    layers = cfg.get("vision_feature_layer", -2)
    layers = (layers,) if isinstance(layers, int) else tuple(layers)
    projector = ProjectorConfig(
        kind="mlp2x", in_features=vision.hidden_size * len(layers), out_features=decoder.hidden_size,
        activation=cfg.get("projector_hidden_act", "gelu"),
        use_bias=cfg.get("multimodal_projector_bias", True),
        dtype=execution.get("dtype", "float32"), param_dtype=execution.get("param_dtype", "float32"),
    )
    image_token = cfg.get("image_token_id", cfg.get("image_token_index"))
    if image_token is None:
      raise ValueError("LLaVA config has no image_token_id / image_token_index")
    return cls(vision=vision, projector=projector, decoder=decoder, image_token_id=image_token,
               feature_layers=layers,
               feature_select=cfg.get("vision_feature_select_strategy", "default"))

  def to_hf(self) -> dict[str, Any]:
    """transformers' `LlavaConfig` dict (`from_hf` reads it back)."""
    if self.projector.kind != "mlp2x":
      raise ValueError(f"transformers' LLaVA has an mlp2x projector, not {self.projector.kind!r}")
    layers = self.feature_layers
    return dict(
        architectures=["LlavaForConditionalGeneration"], model_type="llava",
        vision_config=self.vision.to_hf(), text_config=decoder_to_hf(self.decoder),
        image_token_id=self.image_token_id, image_seq_length=self.tokens_per_image,
        projector_hidden_act=self.projector.activation,
        multimodal_projector_bias=self.projector.use_bias,
        vision_feature_layer=layers[0] if len(layers) == 1 else list(layers),
        vision_feature_select_strategy=self.feature_select,
        tie_word_embeddings=self.decoder.tie_embeddings)


class Llava(nn.Module):
  config: LlavaConfig

  def setup(self):
    self.encoder = VisionTransformer(self.config.vision)
    self.connector = Projector(self.config.projector)
    self.decoder = Decoder(self.config.decoder)

  def image_features(self, pixels: jax.Array) -> jax.Array:
    """`pixels [I, H, W, C]` -> `[I, tokens_per_image, D_text]`."""
    cfg = self.config
    # Layers past the deepest one read are neither run nor differentiated.
    layers = [layer % (cfg.vision.num_layers + 1) for layer in cfg.feature_layers]
    hidden = self.encoder(pixels, num_layers=max(layers))["hidden_states"]  # [max+1, I, N, D_v]
    selected = [hidden[layer] for layer in layers]
    if cfg.feature_select == "default":
      selected = [h[:, 1:] for h in selected]
    return self.connector(jnp.concatenate(selected, axis=-1))

  def embed(self, input_ids: jax.Array, pixels: jax.Array | None,
            image_valid: jax.Array | None = None) -> jax.Array:
    """Text embeddings with image features in the placeholder slots: `[B, T, D]`.

    `image_valid [I]` marks real images when `pixels` has padding slots (training batches).
    """
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)
    is_placeholder = input_ids == cfg.image_token_id
    if pixels is None or pixels.shape[0] == 0:
      check_placeholders(input_ids, cfg.image_token_id, 0)
      return embeddings
    features = self.image_features(pixels)
    tokens = features.shape[1]
    features = features.reshape(-1, features.shape[-1])  # [I * tokens, D]
    valid = None
    if image_valid is not None:
      valid = jnp.repeat(image_valid.astype(bool), tokens)  # [I * tokens]
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
    """`input_ids [B, T]`, `pixels [I, H, W, C]` (all images of the batch, in row order).

    Returns the decoder's output (`DecoderOutput`: float32 logits `[B, T, V]`, the updated
    cache, the last hidden states, or `head_loss`'s result when given).
    """
    embeddings = self.embed(input_ids, pixels, image_valid)
    return self.decoder(embeddings, positions, attention_mask, segment_ids, cache, cache_index,
                        head_loss=head_loss)


def config_from_dict(model: Mapping[str, Any]) -> LlavaConfig:
  """A training config's `model.{vision, projector, decoder, ...}` -> LlavaConfig."""
  vision = VisionConfig(**dict(model["vision"]))
  decoder_args = dict(model["decoder"])
  rope = RopeConfig(**dict(decoder_args.pop("rope", {})))
  decoder = DecoderConfig(rope=rope, **decoder_args)
  layers = tuple(model.get("feature_layers", (-1,)))
  projector = ProjectorConfig(in_features=vision.hidden_size * len(layers),
                              out_features=decoder.hidden_size, **dict(model["projector"]))
  return LlavaConfig(vision=vision, projector=projector, decoder=decoder,
                     image_token_id=int(model["image_token_id"]), feature_layers=layers,
                     feature_select=model.get("feature_select", "full"))


class LlavaFamily(TiledImageFamily):
  name = "llava"
  hf_model_types = ("llava",)
  config_cls = LlavaConfig
  module_cls = Llava
  table = "llava"

  def config_from_hf(self, hf_config, **execution):
    return LlavaConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_dict(model)

  def hf_processor_config(self, config, image_token):
    """`LlavaProcessor` expands `image_token` to (image / patch)^2 + class token tokens, less one
    for the 'default' feature selection: `config.tokens_per_image`."""
    return dict(processor_class="LlavaProcessor", image_token=image_token,
                patch_size=config.vision.patch_size,
                num_additional_image_tokens=int(config.vision.class_token),
                vision_feature_select_strategy=config.feature_select)


FAMILIES = (LlavaFamily(),)

"""InternVL 1.5 / 2 / 2.5 / 3: InternViT, pixel shuffle + MLP, and a Llama-family decoder.

Every tile (448 px, dynamic tiling plus a thumbnail) becomes `tokens_per_image` features that
replace the `<IMG_CONTEXT>` placeholder embeddings, in order (embedding fusion, as in LLaVA).
Configs come from transformers' native `internvl` checkpoints or from the original release
(`internvl_chat`, whose InternLM2 decoder runs as a Llama decoder once its weights are converted).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.connectors.pixel_shuffle import PixelShuffleConfig, PixelShuffleMlp
from mmjax.decoders.config import DecoderConfig, decoder_to_hf
from mmjax.decoders.llama import Decoder, DecoderOutput, HeadLoss
from mmjax.encoders.intern_vit import InternVisionTransformer, InternVitConfig
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.tiled_family import TiledImageFamily
from mmjax.nn.multihead import KVCache
from mmjax.nn.rope import RopeConfig

IMAGE_CONTEXT_TOKEN = "<IMG_CONTEXT>"
SELECT_STRATEGIES = ("default", "full")
ORIGINAL_DECODERS = ("internlm2", "qwen2", "llama")


@dataclasses.dataclass(frozen=True)
class InternVLConfig:
  vision: InternVitConfig
  connector: PixelShuffleConfig
  decoder: DecoderConfig
  image_token_id: int
  feature_layer: int = -1  # hidden-state index; -1 is the last layer's output
  feature_select: str = "default"  # 'default' drops the class token
  original_decoder: str | None = None  # 'internlm2' | 'qwen2' | 'llama' for original checkpoints

  def __post_init__(self):
    if self.feature_select not in SELECT_STRATEGIES:
      raise ValueError(f"unknown feature_select {self.feature_select!r}; known: {SELECT_STRATEGIES}")
    n = self.vision.num_layers + 1
    if not -n <= self.feature_layer < n:
      raise ValueError(f"feature layer {self.feature_layer} out of range for "
                       f"{self.vision.num_layers} layers")
    if self.feature_select == "full":
      raise ValueError("InternVL shuffles a square patch grid: feature_select must be 'default'")
    if self.vision.grid % self.connector.factor:
      raise ValueError(f"a {self.vision.grid}x{self.vision.grid} patch grid does not divide by the "
                       f"pixel-shuffle factor {self.connector.factor}")

  @property
  def tokens_per_image(self) -> int:
    """Features per tile: `(grid * downsample_ratio)^2` (256 for 448-px tiles of 14-px patches)."""
    return (self.vision.grid // self.connector.factor) ** 2

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "InternVLConfig":
    """Reads transformers' `InternVLConfig` (model_type `internvl`)."""
    vision = InternVitConfig.from_hf(cfg["vision_config"], **execution)
    text = cfg["text_config"]
    tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    decoder = DecoderConfig.from_hf(text, tie_embeddings=bool(tie), **execution)
    layer = cfg.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
      raise ValueError(f"InternVL takes one vision_feature_layer, got {layer}")
    return cls(vision=vision, connector=_connector(vision, decoder, cfg, execution),
               decoder=decoder, image_token_id=cfg.get("image_token_id", 151667),
               feature_layer=layer,
               feature_select=cfg.get("vision_feature_select_strategy", "default"))

  @classmethod
  def from_original(cls, cfg: Mapping[str, Any], **execution) -> "InternVLConfig":
    """Reads the original release's `InternVLChatConfig` (model_type `internvl_chat`).

    Its `image_token_id` is not part of that config; `with_image_token_from_tokenizer` adds it.
    """
    if cfg.get("ps_version", "v2") != "v2":
      raise ValueError(f"unsupported ps_version {cfg.get('ps_version')!r}: only InternVL's 'v2' "
                       "pixel shuffle (InternVL 1.5 and later) is implemented")
    vision = InternVitConfig.from_original(cfg["vision_config"], **execution)
    forced = cfg.get("force_image_size")
    if forced not in (None, vision.image_size):
      raise ValueError(f"force_image_size {forced} differs from the vision tower's image_size "
                       f"{vision.image_size}; interpolated position embeddings are not supported")
    llm = dict(cfg["llm_config"])
    kind = llm.get("model_type")
    if kind not in ORIGINAL_DECODERS:
      raise ValueError(f"unsupported llm_config model_type {kind!r}; supported: {ORIGINAL_DECODERS}")
    if kind == "internlm2":  # the same computation as Llama once wqkv is split
      bias = bool(llm.get("bias", True))
      llm.update(model_type="llama", attention_bias=bias, mlp_bias=False)
    tie = llm.get("tie_word_embeddings", False)
    decoder = DecoderConfig.from_hf(llm, tie_embeddings=bool(tie), **execution)
    if "image_token_id" not in cfg:
      raise ValueError("the InternVL config has no image_token_id and the tokenizer files name no "
                       f"{IMAGE_CONTEXT_TOKEN} token")
    return cls(vision=vision, connector=_connector(vision, decoder, cfg, execution),
               decoder=decoder, image_token_id=int(cfg["image_token_id"]),
               feature_layer=cfg.get("select_layer", -1), original_decoder=kind)

  def to_hf(self) -> dict[str, Any]:
    """transformers' native `InternVLConfig` dict (what `mmjax export` writes)."""
    return dict(
        architectures=["InternVLForConditionalGeneration"], model_type="internvl",
        vision_config=self.vision.to_hf(), text_config=decoder_to_hf(self.decoder),
        image_token_id=self.image_token_id, image_seq_length=self.tokens_per_image,
        downsample_ratio=self.connector.downsample_ratio,
        projector_hidden_act=self.connector.activation, vision_feature_layer=self.feature_layer,
        vision_feature_select_strategy=self.feature_select,
        tie_word_embeddings=self.decoder.tie_embeddings)


def _connector(vision, decoder, cfg, execution) -> PixelShuffleConfig:
  return PixelShuffleConfig(
      vision_features=vision.hidden_size, out_features=decoder.hidden_size,
      downsample_ratio=cfg.get("downsample_ratio", 0.5),
      activation=cfg.get("projector_hidden_act", "gelu"),
      dtype=execution.get("dtype", "float32"), param_dtype=execution.get("param_dtype", "float32"))


def config_from_dict(model: Mapping[str, Any]) -> InternVLConfig:
  """A training config's `model` section (`vision`, `decoder` (+ `rope`), `image_token_id`,
  optional `downsample_ratio`, execution keys) -> InternVLConfig, e.g. `configs/tiny/internvl.py`."""
  execution = {k: model[k] for k in ("dtype", "param_dtype", "remat_policy", "attention_backend")
               if model.get(k) is not None}
  vision = InternVitConfig(**model["vision"], **execution)
  decoder = dict(model["decoder"])
  rope = RopeConfig(**decoder.pop("rope", {}))
  decoder = DecoderConfig(rope=rope, **decoder, **execution)
  execution.pop("remat_policy", None)
  execution.pop("attention_backend", None)
  connector = PixelShuffleConfig(vision.hidden_size, decoder.hidden_size,
                                 model.get("downsample_ratio", 0.5), **execution)
  return InternVLConfig(vision=vision, connector=connector, decoder=decoder,
                        image_token_id=int(model["image_token_id"]))


class InternVL(nn.Module):
  config: InternVLConfig

  def setup(self):
    self.encoder = InternVisionTransformer(self.config.vision)
    self.connector = PixelShuffleMlp(self.config.connector)
    self.decoder = Decoder(self.config.decoder)

  def image_features(self, pixels: jax.Array, train: bool = False) -> jax.Array:
    """Tiles `pixels [I, H, W, C]` -> `[I, tokens_per_image, D_text]`."""
    cfg = self.config
    out = self.encoder(pixels, train)
    if cfg.feature_layer == -1:
      features = out["last_hidden_state"]
    else:
      features = out["hidden_states"][cfg.feature_layer]
    return self.connector(features[:, 1:])  # drop the class token: [I, N, D_v] -> [I, N', D]

  def embed(self, input_ids: jax.Array, pixels: jax.Array | None,
            image_valid: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Text embeddings with tile features in the placeholder slots: `[B, T, D]`.

    `image_valid [I]` marks real tiles when `pixels` has padding slots (training batches);
    `train=True` turns on the encoder's drop path (needs a 'dropout' rng).
    """
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)
    is_placeholder = input_ids == cfg.image_token_id
    if pixels is None or pixels.shape[0] == 0:
      check_placeholders(input_ids, cfg.image_token_id, 0)
      return embeddings
    features = self.image_features(pixels, train)
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
      train: bool = False,
      head_loss: HeadLoss | None = None,
  ) -> DecoderOutput:
    """`input_ids [B, T]`, `pixels [I, H, W, C]` (every tile of the batch, in row order);
    `train=True` turns on drop path in the encoder (needs a 'dropout' rng).

    Returns the decoder's output (`DecoderOutput`: float32 logits `[B, T, V]`, the updated
    cache, the last hidden states, or `head_loss`'s result when given).
    """
    embeddings = self.embed(input_ids, pixels, image_valid, train)
    return self.decoder(embeddings, positions, attention_mask, segment_ids, cache, cache_index,
                        head_loss=head_loss)



class InternVLFamily(TiledImageFamily):
  """transformers' native `internvl` checkpoints."""

  name = "internvl"
  hf_model_types = ("internvl",)
  config_cls = InternVLConfig
  module_cls = InternVL
  table = "internvl"

  def config_from_hf(self, hf_config, **execution):
    return InternVLConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_dict({k: v for k, v in model.items() if k != "family"})

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    from mmjax.generation.internvl import InternVLPromptBuilder

    return InternVLPromptBuilder.from_checkpoint(ckpt_dir, config, chat_template)

  def stochastic_kwargs(self, module, rng):
    """InternViT's drop path trains with `train=True` and a 'dropout' rng."""
    if module.config.vision.drop_path_rate > 0:
      return dict(train=True, rngs={"dropout": rng})
    return {}


class InternVLChatFamily(InternVLFamily):
  """The original release (`internvl_chat`), read into the same model and stored as `internvl`
  (its conversion table says so), so that export writes transformers' native layout."""

  name = "internvl_chat"
  hf_model_types = ("internvl_chat",)
  table = "internvl_chat"

  def config_from_hf(self, hf_config, **execution):
    return InternVLConfig.from_original(hf_config, **execution)

  def config_from_training(self, model):
    return super(InternVLFamily, self).config_from_training(model)  # not from configs


FAMILIES = (InternVLFamily(), InternVLChatFamily())

"""Fuyu (transformers `fuyu`): no vision encoder. The processor cuts each image into patches of
`patch_size`^2 pixels, flattened (`[P, patch_size * patch_size * channels]`); one Linear
(`vision_embed_tokens`) embeds each patch, and the embeddings take the `|SPEAKER|` placeholder
slots in order, as transformers' `masked_scatter` does (the processor ends each patch row with a
`|NEWLINE|` token, which stays text). The decoder is Persimmon's (`DecoderConfig` with
`norm='layer'`, `mlp='dense'`).

The Linear is the model's `connector` (its only image part): the family's components are
`("connector", "decoder")` and its only scanned stack the decoder (`Family.components`,
`Family.stacks`: nothing names an encoder). Training takes the pipeline's `fuyu` image preset:
rows of patch slots with `image_mask` marking the real ones (`FuyuFamily.train_images`).
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.decoders.config import DecoderConfig, decoder_to_hf
from mmjax.decoders.llama import Decoder
from mmjax.models import flops as fl
from mmjax.models.inputs import text_train_batch
from mmjax.models.fusion import check_placeholders, merge_image_features
from mmjax.models.host_images import HostImagesFamily, HostImagesModule
from mmjax.nn.linear import Einsum

# FuyuProcessor's patches: `image_patches` (its default, legacy output) or `pixel_values` (with
# `return_legacy_image_output=False`): the same array, `[P, F]` (or `[I, P, F]` from older
# releases), every image's patches in row order.
PROCESSOR_KEYS = ("image_patches", "pixel_values")


@dataclasses.dataclass(frozen=True)
class FuyuConfig:
  decoder: DecoderConfig
  image_token_id: int
  patch_size: int = 30
  num_channels: int = 3
  image_size: int = 300  # transformers keeps it; the processor's target size is its own

  @property
  def patch_features(self) -> int:
    """Values of one flattened patch (the Linear's input)."""
    return self.patch_size * self.patch_size * self.num_channels

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "FuyuConfig":
    """Reads a transformers `FuyuConfig` dict (config.json); `execution` sets dtypes/remat."""
    text = dict(cfg["text_config"])
    text.setdefault("model_type", "persimmon")
    tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    decoder = DecoderConfig.from_hf(text, tie_embeddings=bool(tie), **execution)
    return cls(decoder=decoder, image_token_id=int(cfg.get("image_token_id", 71011)),
               patch_size=int(cfg.get("patch_size", 30)),
               num_channels=int(cfg.get("num_channels", 3)),
               image_size=int(cfg.get("image_size", 300)))

  def to_hf(self) -> dict[str, Any]:
    """transformers' `FuyuConfig` dict (`from_hf` reads it back)."""
    return dict(architectures=["FuyuForCausalLM"], model_type="fuyu",
                text_config=decoder_to_hf(self.decoder), image_token_id=self.image_token_id,
                patch_size=self.patch_size, num_channels=self.num_channels,
                image_size=self.image_size, tie_word_embeddings=self.decoder.tie_embeddings)


def patches_from_processor(config: FuyuConfig, inputs: Mapping[str, Any]) -> np.ndarray | None:
  """The processor's patches -> float32 `[P, F]` (None without images); both of its names."""
  given = [k for k in PROCESSOR_KEYS if inputs.get(k) is not None]
  if len(given) > 1:
    raise ValueError(f"give the patches once, as one of {PROCESSOR_KEYS}, not {given}")
  if not given:
    return None
  patches = np.asarray(inputs[given[0]], np.float32)
  if patches.ndim not in (2, 3) or patches.shape[-1] != config.patch_features:
    raise ValueError(
        f"{given[0]} must be [patches, {config.patch_features}] (patch_size^2 x channels = "
        f"{config.patch_size}^2 x {config.num_channels}), got {patches.shape}")
  return patches.reshape(-1, config.patch_features)


def num_patches(patches) -> int:
  return 0 if patches is None else int(np.shape(patches)[0])


class Fuyu(HostImagesModule):
  """`vision_embed_tokens` (the connector) over raw patches, Persimmon decoder."""

  config: FuyuConfig

  def setup(self):
    cfg = self.config
    d, f = cfg.decoder.hidden_size, cfg.patch_features
    self.connector = Einsum(  # [D, F], torch's out-major layout
        "PF,DF->PD", (d, f), ("embed", None), bias_shape=(d,), bias_axes=("embed",),
        dtype=jnp.dtype(cfg.decoder.dtype), param_dtype=jnp.dtype(cfg.decoder.param_dtype),
        name="connector")
    self.decoder = Decoder(cfg.decoder)

  def embed(self, input_ids: jax.Array, patches: jax.Array | Mapping[str, jax.Array] | None
            ) -> jax.Array:
    """Text embeddings `[B, T, D]` with the patches' embeddings in the placeholder slots.
    `patches`: `[P, F]`, or a training batch's `{'patches': [P, F], 'valid': [P]}` (padding
    slots among them)."""
    cfg = self.config
    embeddings = self.decoder.embed(input_ids)
    valid = None
    if isinstance(patches, Mapping):
      patches, valid = patches["patches"], patches["valid"]
    else:
      check_placeholders(input_ids, cfg.image_token_id, num_patches(patches))
    if patches is None or patches.shape[0] == 0:
      return embeddings
    features = self.connector(patches.astype(embeddings.dtype))  # [P, D]
    return merge_image_features(embeddings, input_ids == cfg.image_token_id, features, valid)


def config_from_training(model: Mapping[str, Any]) -> FuyuConfig:
  """A training config's model section: `decoder` in transformers' `PersimmonConfig` keys (Fuyu's
  language model is always Persimmon: read as a checkpoint's is), `image_token_id`,
  `patch_size` and `num_channels` (execution keys apply after)."""
  return FuyuConfig.from_hf({**{k: model[k] for k in ("image_token_id", "patch_size",
                                                       "num_channels") if k in model},
                             "text_config": dict(model["decoder"])})


class FuyuFamily(HostImagesFamily):
  """transformers' `fuyu` checkpoints (inference: logits, generation) and training from the
  pipeline's `fuyu` samples (`train_images`)."""

  name = "fuyu"
  hf_model_types = ("fuyu",)
  config_cls = FuyuConfig
  module_cls = Fuyu
  table = "fuyu"
  components = ("connector", "decoder")  # no encoder: the patch Linear is the connector
  stacks = {"decoder": "decoder"}
  processor_keys = PROCESSOR_KEYS
  flops_batch_keys = ("image_mask",)

  def config_from_hf(self, hf_config, **execution):
    return FuyuConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_training(model)

  def check_training_data(self, config, data, tokenizer):
    """The pipeline's `fuyu` patches are the model's and its `|SPEAKER|` is the image token."""
    token = tokenizer.token_to_id(data.image_token)
    if token != config.image_token_id:
      raise ValueError(f"data.image_token {data.image_token!r} is id {token} in the tokenizer, but "
                       f"model.image_token_id is {config.image_token_id}")
    if data.image.family != "fuyu" or data.image.patch_size != config.patch_size \
        or config.num_channels != 3:
      raise ValueError(f"Fuyu takes raw RGB patches of {config.patch_size} px: data.image_preset="
                       f"'fuyu' with image_overrides.patch_size={config.patch_size} (got "
                       f"{data.image.family!r}, patch_size {data.image.patch_size})")

  def train_images(self, config, batch):
    """The batch's patch slots `pixel_values [B*S, F]` and `image_mask [B*S]` (real patches, in
    row order, fill the `|SPEAKER|` slots in order)."""
    return {"patches": batch["pixel_values"], "valid": batch["image_mask"]}

  def train_flops(self, config, params, batch, trainable, attention=("decoder", "encoder")):
    """The decoder per token; the patch Linear per real patch (`image_mask`)."""
    rows, length = np.shape(batch["input_ids"])
    per = {name: fl.per_param(name, trainable, self.components) for name in self.components}
    flops = fl.decoder_flops(config.decoder, params.get("decoder", {}), rows, length,
                             per["decoder"], "decoder" in attention)
    if "connector" in params:
      patches = int(np.sum(batch["image_mask"])) if "image_mask" in batch else \
          num_patches(patches_from_processor(config, batch))
      flops += per["connector"] * fl.count_params(params["connector"]) * patches
    return float(flops)

  def abstract_train_batch(self, config, data, sds):
    """Rows own `max_tiles` patch slots `[patch_size^2 * channels]`."""
    slots = int(data["batch_size"]) * int(data.get("max_tiles", 1))
    return {**text_train_batch(data, sds), "image_mask": sds((slots,), jnp.bool_),
            "pixel_values": sds((slots, config.patch_features), jnp.float32)}

  def example_inputs(self, config):
    """One row of two placeholders and their two patches."""
    ids = jnp.full((1, 2), config.image_token_id, jnp.int32)
    return ids, jnp.zeros((2, config.patch_features), jnp.float32), jnp.zeros_like(ids)

  def images_from_processor(self, config, inputs):
    return patches_from_processor(config, inputs)

  def check_image_placeholders(self, config, input_ids, images):
    check_placeholders(input_ids, config.image_token_id, num_patches(images))

  def example_processor_inputs(self, config, batch, length):
    """Every row all placeholders: `length` patches each (an upper bound of what a prompt of
    `length` tokens holds)."""
    ids = np.full((batch, length), config.image_token_id, np.int32)
    return {"input_ids": ids,
            "image_patches": np.zeros((batch * length, config.patch_features), np.float32)}

  def prompt_builder(self, ckpt_dir, config, chat_template=True):
    """FuyuProcessor's layout (`mmjax.generation.fuyu`); Fuyu has no chat template, so
    `chat_template` changes nothing."""
    from mmjax.generation.fuyu import FuyuPromptBuilder

    return FuyuPromptBuilder.from_checkpoint(ckpt_dir, config)


FAMILIES = (FuyuFamily(),)

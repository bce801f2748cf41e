"""CLIP and SigLIP dual encoders: an image tower and a text tower meeting in one embedding space.

Parameters: `encoder` (the vision tower, SigLIP's attention-pooling head included),
`text_encoder` (`mmjax.encoders.text_tower`), `head` (CLIP: `visual_projection` and
`text_projection` kernels, `logit_scale`; SigLIP: `logit_scale`, `logit_bias`). The logits are
transformers': `image_embeds @ text_embeds.T * exp(logit_scale) + logit_bias` over L2-normalised
embeddings. The contrastive objective itself lives with the trainer, which calls
`DualEncoderFamily.contrastive_forward`.
"""

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.encoders.text_tower import TextConfig, TextTransformer
from mmjax.encoders.vit import VisionConfig, VisionTransformer
from mmjax.models import flops as fl
from mmjax.models.family import Family
from mmjax.models.inputs import nchw_to_nhwc
from mmjax.nn.linear import Einsum

KINDS = ("clip", "siglip")
# Initial logit scale / bias of a model trained from scratch: CLIP's log(1 / 0.07); SigLIP's
# paper values log(10) and -10 (the negatives outnumber the positives).
INIT_SCALE = {"clip": math.log(1 / 0.07), "siglip": math.log(10.0)}
INIT_BIAS = {"clip": 0.0, "siglip": -10.0}


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
  kind: str  # 'clip' | 'siglip'
  vision: VisionConfig
  text: TextConfig
  projection_dim: int | None = None  # CLIP's shared embedding width (SigLIP has no projections)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown dual encoder kind {self.kind!r}; known: {list(KINDS)}")
    if self.vision.kind != self.kind or self.text.kind != self.kind:
      raise ValueError(f"a {self.kind} dual encoder needs {self.kind} towers, got vision "
                       f"{self.vision.kind!r} and text {self.text.kind!r}")
    if self.kind == "clip" and not self.projection_dim:
      raise ValueError("a CLIP dual encoder needs projection_dim")
    if self.kind == "siglip":
      if self.projection_dim is not None:
        raise ValueError("a SigLIP dual encoder has no projection_dim (its text head maps to the "
                         "vision width)")
      if not self.vision.pooling_head:
        raise ValueError("a SigLIP dual encoder's vision tower needs its pooling head")
      if self.text.projection_size != self.vision.hidden_size:
        raise ValueError(f"SigLIP's text head width ({self.text.projection_size}) must equal the "
                         f"vision width ({self.vision.hidden_size}): they are compared directly")

  @property
  def embed_dim(self) -> int:
    return self.projection_dim if self.kind == "clip" else self.vision.hidden_size

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "DualEncoderConfig":
    """transformers' `CLIPConfig` / `SiglipConfig` dict (config.json)."""
    kind = cfg.get("model_type")
    if kind not in KINDS:
      raise ValueError(f"unsupported dual encoder model_type {kind!r}; supported: {list(KINDS)}")
    vision = dict(cfg.get("vision_config") or {}, model_type=f"{kind}_vision_model")
    text = dict(cfg.get("text_config") or {}, model_type=f"{kind}_text_model")
    return cls(kind=kind, vision=VisionConfig.from_hf(vision, **execution),
               text=TextConfig.from_hf(text, **execution),
               projection_dim=cfg.get("projection_dim", 512) if kind == "clip" else None)

  def to_hf(self) -> dict[str, Any]:
    """transformers' `CLIPConfig` / `SiglipConfig` dict (`from_hf` reads it back)."""
    out = dict(architectures=["CLIPModel" if self.kind == "clip" else "SiglipModel"],
               model_type=self.kind, vision_config=self.vision.to_hf(),
               text_config=self.text.to_hf())
    if self.kind == "clip":
      out["projection_dim"] = self.projection_dim
    return out


@flax.struct.dataclass
class ContrastiveOutput:
  image_embeds: jax.Array  # [B, D] float32, L2-normalised
  text_embeds: jax.Array  # [N, D] float32, L2-normalised
  logit_scale: jax.Array  # [] the raw (log-space) parameter
  logit_bias: jax.Array  # [] 0.0 for CLIP

  def logits_per_image(self) -> jax.Array:
    """`[B, N]` float32, as transformers' `logits_per_image`."""
    sims = jnp.einsum("BD,ND->BN", self.image_embeds, self.text_embeds)
    return sims * jnp.exp(self.logit_scale) + self.logit_bias


def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


class ContrastiveHead(nn.Module):
  """CLIP's bias-free projections into the shared space; both kinds' logit scale (and bias)."""

  config: DualEncoderConfig

  def setup(self):
    cfg = self.config
    param_dtype = jnp.dtype(cfg.vision.param_dtype)
    scalar = lambda value: nn.with_logical_partitioning(nn.initializers.constant(value), ())
    self.logit_scale = self.param("logit_scale", scalar(INIT_SCALE[cfg.kind]), (), param_dtype)
    if cfg.kind == "siglip":
      self.logit_bias = self.param("logit_bias", scalar(INIT_BIAS[cfg.kind]), (), param_dtype)
      return

    def projection(width, axis, config):  # out-major [P, D] like torch's Linear.weight
      return Einsum("ND,PD->NP", (cfg.projection_dim, width), (None, axis),
                    dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))

    self.visual_projection = projection(cfg.vision.hidden_size, "vit_embed", cfg.vision)
    self.text_projection = projection(cfg.text.hidden_size, "embed", cfg.text)

  def project_image(self, pooled: jax.Array) -> jax.Array:
    return pooled if self.config.kind == "siglip" else self.visual_projection(pooled)

  def project_text(self, pooled: jax.Array) -> jax.Array:
    return pooled if self.config.kind == "siglip" else self.text_projection(pooled)

  def scale_and_bias(self) -> tuple[jax.Array, jax.Array]:
    bias = self.logit_bias if self.config.kind == "siglip" else jnp.zeros((), jnp.float32)
    return self.logit_scale.astype(jnp.float32), bias.astype(jnp.float32)


class DualEncoder(nn.Module):
  config: DualEncoderConfig

  def setup(self):
    self.encoder = VisionTransformer(self.config.vision)
    self.text_encoder = TextTransformer(self.config.text)
    self.head = ContrastiveHead(self.config)

  def encode_image(self, pixels: jax.Array) -> jax.Array:
    """`pixels [B, H, W, C]` -> `[B, D]` float32, L2-normalised."""
    return l2_normalize(self.head.project_image(self.encoder(pixels)["pooled"]))

  def encode_text(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """`ids [N, L]`, `mask [N, L]` (1 = token; None: every position) -> `[N, D]` float32,
    L2-normalised. CLIP masks padding keys as well as future ones; SigLIP attends to padding
    unless a mask is given (transformers does the same; SiglipProcessor makes no mask)."""
    return l2_normalize(self.head.project_text(self.text_encoder(ids, mask)["pooled"]))

  def __call__(self, pixels: jax.Array, text_ids: jax.Array,
               text_mask: jax.Array | None = None) -> ContrastiveOutput:
    scale, bias = self.head.scale_and_bias()
    return ContrastiveOutput(image_embeds=self.encode_image(pixels),
                             text_embeds=self.encode_text(text_ids, text_mask),
                             logit_scale=scale, logit_bias=bias)


def _tower(cls, kind: str, section: Mapping[str, Any], defaults: Mapping[str, Any]):
  return cls(**{"kind": kind, **defaults, **dict(section)})


def config_from_dict(model: Mapping[str, Any]) -> DualEncoderConfig:
  """A training config's model section: `kind`, `vision` and `text` (VisionConfig / TextConfig
  fields; activations, norms' eps and SigLIP's heads default by kind), `projection_dim` (CLIP)."""
  kind = model.get("kind")
  if kind not in KINDS:
    raise ValueError(f"model.kind must be one of {list(KINDS)} for a dual encoder, got {kind!r}")
  clip = kind == "clip"
  act = "quick_gelu" if clip else "gelu_pytorch_tanh"
  eps = 1e-5 if clip else 1e-6
  vision = _tower(VisionConfig, kind, model["vision"],
                  dict(activation=act, layer_norm_eps=eps, pooling_head=not clip))
  text_defaults = dict(activation=act, layer_norm_eps=eps)
  if not clip:
    text_defaults["projection_size"] = vision.hidden_size
  text = _tower(TextConfig, kind, model["text"], text_defaults)
  projection = model.get("projection_dim")
  return DualEncoderConfig(kind=kind, vision=vision, text=text,
                           projection_dim=int(projection) if projection is not None else None)


class DualEncoderFamily(Family):
  """CLIP / SigLIP dual encoders (`CLIPModel`, `SiglipModel`). Their "logits" are
  `logits_per_image [B_images, N_texts]`: what `mmjax logits` writes for these checkpoints."""

  name = "dual_encoder"
  hf_model_types = ("clip", "siglip")
  config_cls = DualEncoderConfig
  module_cls = DualEncoder
  table = "dual_encoder"
  # The towers run side by side; both feed the head (see `train_flops`).
  components = ("encoder", "text_encoder", "head")
  stacks = {"encoder": "vision", "text_encoder": "text"}
  processor_keys = ("pixel_values",)

  def config_from_hf(self, hf_config, **execution):
    return DualEncoderConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_dict(model)

  def decoder_config(self, config):
    return None

  def text_vocab_size(self, config):
    return config.text.vocab_size

  def example_inputs(self, config):
    v = config.vision
    return (jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32),
            jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32))

  def forward_from_hf_inputs(self, config, params, inputs):
    """CLIPProcessor / SiglipProcessor arrays: `input_ids [N, L]`, `attention_mask [N, L]`
    (optional), `pixel_values [B, C, H, W]` -> float32 `logits_per_image [B, N]`."""
    for key in ("input_ids", "pixel_values"):
      if key not in inputs:
        raise KeyError(f"inputs lack {key!r} (have: {sorted(inputs)})")
    ids = np.asarray(inputs["input_ids"])
    if ids.ndim != 2:
      raise ValueError(f"input_ids must be [texts, length], got {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= config.text.vocab_size):
      raise ValueError(f"input_ids hold ids outside the vocabulary [0, {config.text.vocab_size})")
    mask = inputs.get("attention_mask")
    mask = None if mask is None else jnp.asarray(mask, jnp.int32)
    pixels = jnp.asarray(nchw_to_nhwc(inputs["pixel_values"]))
    module = self.build(config)
    # One compiled program: op by op, the scanned stacks alone take seconds to dispatch.
    run = jax.jit(lambda p, *args: module.apply({"params": p}, *args).logits_per_image())
    return np.asarray(run(params, pixels, jnp.asarray(ids, jnp.int32), mask), np.float32)

  def contrastive_forward(self, module, params, batch: Mapping[str, jax.Array],
                          rng=None) -> ContrastiveOutput:
    """A training batch: `pixels [B, H, W, C]`, `text_ids [B, L]` int32, `text_mask [B, L]`
    (1 = token; applied for both kinds, so a SigLIP pipeline padding to max length as
    SiglipProcessor does passes ones). No stochastic layers: `rng` is unused."""
    return module.apply({"params": params}, batch["pixels"], batch["text_ids"],
                        batch.get("text_mask"))

  def train_flops(self, config, params, batch, trainable, attention=("encoder", "text_encoder")):
    """Each tower's weights per patch / token (6 trained, 2 frozen: neither tower feeds the
    other, so a frozen one runs no backward), plus attention; the head's projections per image
    and text and the `[B, N]` similarities (4 when frozen under a trained tower)."""
    images = np.shape(batch["pixels"])[0]
    texts, length = np.shape(batch["text_ids"])
    per = {name: fl.per_param(name, trainable, (name,)) for name in ("encoder", "text_encoder")}
    per["head"] = fl.per_param("head", trainable, self.components)
    v, t = config.vision, config.text
    flops = 0.0
    if "encoder" in params:
      patches = images * v.num_positions
      products = 2 * v.num_layers * v.hidden_size * v.num_positions * patches
      flops += fl.encoder_flops(params["encoder"], patches, products * ("encoder" in attention),
                                per["encoder"])
    if "text_encoder" in params:
      tower = params["text_encoder"]
      layers = {k: w for k, w in tower.items() if k not in ("token_embed", "pos_embed", "head")}
      tokens = texts * length
      products = 2 * t.num_layers * t.hidden_size * length * tokens
      flops += per["text_encoder"] * (fl.count_params(layers) * tokens +
                                      products * ("text_encoder" in attention))
      flops += per["text_encoder"] * fl.count_params(tower.get("head", {})) * texts
    if "head" in params:
      head = params["head"]
      flops += per["head"] * (fl.count_params(head.get("visual_projection", {})) * images +
                              fl.count_params(head.get("text_projection", {})) * texts +
                              images * texts * config.embed_dim)
    return float(flops)

  def abstract_train_batch(self, config, data, sds):
    b = int(data["batch_size"])
    length = int(data.get("max_length", config.text.max_positions))
    v = config.vision
    return {"pixels": sds((b, v.image_size, v.image_size, v.num_channels), jnp.float32),
            "text_ids": sds((b, length), jnp.int32), "text_mask": sds((b, length), jnp.int32)}

  def flop_depths(self, model):
    return {name: int(model[name]["num_layers"]) for name in ("vision", "text")
            if name in model and "num_layers" in model[name]}


FAMILIES = (DualEncoderFamily(),)

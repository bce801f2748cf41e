"""Idefics2 configuration, read from and written back to transformers' `Idefics2Config`.

Defaults are transformers' own for keys a config.json leaves out. As transformers does, a
perceiver config whose `hidden_size` is not the text model's takes the text model's width and
`rms_norm_eps`.
"""

import dataclasses
from typing import Any, Mapping

from mmjax.connectors.perceiver import ResamplerConfig
from mmjax.connectors.projected_resampler import ProjectedResamplerConfig
from mmjax.decoders.config import DecoderConfig, decoder_to_hf
from mmjax.encoders.vit import VisionConfig

# transformers' `Idefics2VisionConfig` / `Idefics2PerceiverConfig` defaults.
_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
               hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
_PERCEIVER = dict(hidden_act="silu", hidden_size=4096, rms_norm_eps=1e-6, resampler_n_latents=64,
                  resampler_depth=3, resampler_n_heads=16, resampler_head_dim=96,
                  num_key_value_heads=4)
IMAGE_TOKEN_ID = 32001  # transformers' default


@dataclasses.dataclass(frozen=True)
class Idefics2Config:
  vision: VisionConfig  # SigLIP with fractional positions, no pooling head
  connector: ProjectedResamplerConfig
  decoder: DecoderConfig
  image_token_id: int = IMAGE_TOKEN_ID

  def __post_init__(self):
    v, c, d = self.vision, self.connector, self.decoder
    if v.kind != "siglip" or not v.fractional_positions or v.pooling_head:
      raise ValueError("Idefics2's vision tower is SigLIP with fractional positions and no "
                       "pooling head")
    if c.in_features != v.hidden_size or c.resampler.features != d.hidden_size:
      raise ValueError(f"the connector maps {c.in_features} -> {c.resampler.features} features, "
                       f"not the vision width {v.hidden_size} -> the text width {d.hidden_size}")

  @property
  def tokens_per_image(self) -> int:
    """`<image>` placeholders an image takes (the processor's `image_seq_len`)."""
    return self.connector.resampler.num_latents

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "Idefics2Config":
    """Reads transformers' `Idefics2Config` dict (config.json); `execution` sets dtypes etc."""
    v = {**_VISION, **(cfg.get("vision_config") or {})}
    if not isinstance(v["image_size"], int) or not isinstance(v["patch_size"], int):
      raise ValueError(f"Idefics2's vision tower takes one image_size and patch_size (ints), got "
                       f"{v['image_size']}, {v['patch_size']}")
    vision = VisionConfig(
        kind="siglip", image_size=v["image_size"], patch_size=v["patch_size"],
        hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
        num_layers=v["num_hidden_layers"], num_heads=v["num_attention_heads"],
        num_channels=v["num_channels"], layer_norm_eps=v["layer_norm_eps"],
        activation=v["hidden_act"], pooling_head=False, fractional_positions=True, **execution)
    if "text_config" not in cfg:
      raise KeyError("text_config")
    text = {"model_type": "mistral", **cfg["text_config"]}
    decoder = DecoderConfig.from_hf(text, tie_embeddings=bool(cfg.get("tie_word_embeddings",
                                                                      False)), **execution)
    p = {**_PERCEIVER, **(cfg.get("perceiver_config") or {})}
    eps = p["rms_norm_eps"] if p["hidden_size"] == decoder.hidden_size else decoder.rms_norm_eps
    plain = {k: value for k, value in execution.items() if k != "attention_backend"}
    resampler = ResamplerConfig(
        features=decoder.hidden_size, num_latents=p["resampler_n_latents"],
        depth=p["resampler_depth"], num_heads=p["resampler_n_heads"],
        head_dim=p["resampler_head_dim"], num_kv_heads=p["num_key_value_heads"],
        mlp_features=4 * decoder.hidden_size, norm="rms", norm_eps=eps, mlp="gated",
        activation=p["hidden_act"], **plain)
    connector = ProjectedResamplerConfig(
        in_features=vision.hidden_size, hidden=decoder.intermediate_size,
        activation=decoder.activation, resampler=resampler,
        **{k: value for k, value in plain.items() if k in ("dtype", "param_dtype")})
    return cls(vision=vision, connector=connector, decoder=decoder,
               image_token_id=int(cfg.get("image_token_id", IMAGE_TOKEN_ID)))

  def to_hf(self) -> dict[str, Any]:
    """transformers' `Idefics2Config` dict (`from_hf` reads it back)."""
    v, c, d = self.vision, self.connector, self.decoder
    r = c.resampler
    if (c.hidden, c.activation) != (d.intermediate_size, d.activation):
      raise ValueError("transformers' Idefics2 projects with the text model's intermediate_size "
                       "and hidden_act")
    if r.mlp_features not in (0, 4 * r.features) or (r.norm, r.mlp) != ("rms", "gated"):
      raise ValueError("transformers' Idefics2 perceiver has RMS norms and a gated MLP of "
                       "4 x hidden_size")
    vision = dict(model_type="idefics2_vision", hidden_size=v.hidden_size,
                  intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
                  num_attention_heads=v.num_heads, num_channels=v.num_channels,
                  image_size=v.image_size, patch_size=v.patch_size, hidden_act=v.activation,
                  layer_norm_eps=v.layer_norm_eps)
    perceiver = dict(model_type="idefics2_perceiver", hidden_act=r.activation,
                     hidden_size=r.features, rms_norm_eps=r.norm_eps,
                     resampler_n_latents=r.num_latents, resampler_depth=r.depth,
                     resampler_n_heads=r.num_heads, resampler_head_dim=r.head_dim,
                     num_key_value_heads=r.kv_heads)
    return dict(architectures=["Idefics2ForConditionalGeneration"], model_type="idefics2",
                image_token_id=self.image_token_id, tie_word_embeddings=d.tie_embeddings,
                vision_config=vision, perceiver_config=perceiver,
                text_config=decoder_to_hf(d))

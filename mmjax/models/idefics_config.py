"""IDEFICS (v1) configuration, read from and written back to transformers' `IdeficsConfig`.

transformers keeps IDEFICS' language model as two lists, `layers` (Llama layers) and
`gated_cross_attn_layers` (one before every `cross_layer_interval`-th Llama layer, in addition to
it). mmjax runs them as one decoder stack of `text + gated` layers whose `gated_cross` layers sit
at `gated_positions` (`mmjax.decoders.layout`): with an interval of 2, the repeating group is
(gated, self, self), scanned once per gated layer.
"""

import dataclasses
from typing import Any, Mapping

from mmjax.connectors.perceiver import ResamplerConfig
from mmjax.decoders.config import DecoderConfig
from mmjax.encoders.vit import VisionConfig
from mmjax.nn.rope import RopeConfig

GATED = "gated_cross"  # the layer kind (`mmjax.decoders.gated_cross`)
# transformers' nn.LayerNorm default in IDEFICS' perceiver (no eps in its config).
PERCEIVER_NORM_EPS = 1e-5


def gated_positions(text_layers: int, interval: int) -> tuple[int, ...]:
  """Indices of the gated layers in the merged stack: one before each text layer `i` with
  `i % interval == 0`, as `IdeficsModel.forward` runs them."""
  if interval < 1 or text_layers < 1 or text_layers % interval:
    # transformers builds `text_layers // interval` gated layers but reaches for one more.
    raise ValueError(f"num_hidden_layers {text_layers} is not a positive multiple of "
                     f"cross_layer_interval {interval} (transformers' IDEFICS cannot run it)")
  return tuple(j * (interval + 1) for j in range(text_layers // interval))


def hf_layer_index(decoder: DecoderConfig, merged: int) -> int:
  """The index of merged layer `merged` in transformers' list of its kind (`layers.{i}` or
  `gated_cross_attn_layers.{i}`)."""
  gated = set(decoder.cross_attention_layers)
  return sum(1 for i in range(merged) if (i in gated) == (merged in gated))


@dataclasses.dataclass(frozen=True)
class IdeficsConfig:
  vision: VisionConfig  # CLIP-style: class token, pre-layernorm, bias-free patch convolution
  decoder: DecoderConfig  # the merged stack (text and gated layers)
  cross_layer_interval: int
  resampler: ResamplerConfig | None = None  # `use_resampler`
  # The `<image>` token's id, from which training finds the images in a row (transformers'
  # config does not hold it: IdeficsProcessor asks the tokenizer); None: not set.
  image_token_id: int | None = None

  def __post_init__(self):
    d = self.decoder
    expected = gated_positions(self.text_layers, self.cross_layer_interval)
    if d.cross_attention_layers != expected or d.cross_attention_kind != GATED:
      raise ValueError(f"an IDEFICS decoder of {self.text_layers} text layers with "
                       f"cross_layer_interval {self.cross_layer_interval} has {GATED} layers at "
                       f"{expected}, got {d.cross_attention_kind} at {d.cross_attention_layers}")
    if self.resampler is not None and self.resampler.features != self.vision.hidden_size:
      raise ValueError(f"the resampler's width {self.resampler.features} is not the vision "
                       f"tower's {self.vision.hidden_size}")

  @property
  def text_layers(self) -> int:
    return self.decoder.num_layers - len(self.decoder.cross_attention_layers)

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "IdeficsConfig":
    """Reads transformers' `IdeficsConfig` (config.json); `execution` sets dtypes etc."""
    v = dict(cfg.get("vision_config") or {})
    side = v.get("image_size", 224)
    patch = v.get("patch_size", 14)
    if not isinstance(side, int) or not isinstance(patch, int):
      raise ValueError(f"IDEFICS' vision tower takes square images and patches (one int), got "
                       f"image_size {side}, patch_size {patch}")
    vision = VisionConfig(
        kind="clip", image_size=side, patch_size=patch, hidden_size=v.get("embed_dim", 768),
        intermediate_size=v.get("intermediate_size", 5120),
        num_layers=v.get("num_hidden_layers", 32), num_heads=v.get("num_attention_heads", 16),
        num_channels=v.get("num_channels", 3), layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        activation=v.get("hidden_act", "gelu"), **execution)
    resampler = None
    if cfg.get("use_resampler", False):
      p = dict(cfg.get("perceiver_config") or {})
      resampler = ResamplerConfig(
          features=vision.hidden_size, num_latents=p.get("resampler_n_latents", 64),
          depth=p.get("resampler_depth", 6), num_heads=p.get("resampler_n_heads", 16),
          head_dim=p.get("resampler_head_dim", 96), norm="layer", norm_eps=PERCEIVER_NORM_EPS,
          mlp="relu", qk_norm=bool(p.get("qk_layer_norms_perceiver", False)),
          **{k: v for k, v in execution.items() if k != "attention_backend"})
    interval = int(cfg.get("cross_layer_interval", 1))
    text = {**cfg, "model_type": "llama", "attention_bias": False, "mlp_bias": False,
            "num_key_value_heads": None, "head_dim": None}
    decoder = DecoderConfig.from_hf(text, tie_embeddings=bool(cfg.get("tie_word_embeddings",
                                                                      False)), **execution)
    gated = gated_positions(decoder.num_layers, interval)
    alpha = cfg.get("alpha_type", "float")
    decoder = dataclasses.replace(
        decoder, num_layers=decoder.num_layers + len(gated), cross_attention_layers=gated,
        cross_attention_kind=GATED, cross_attention_gate=alpha,
        cross_attention_qk_norm=bool(cfg.get("qk_layer_norms", False)),
        additional_vocab_size=int(cfg.get("additional_vocab_size", 0)))
    return cls(vision=vision, decoder=decoder, cross_layer_interval=interval,
               resampler=resampler)

  @classmethod
  def from_training(cls, model: Mapping[str, Any]) -> "IdeficsConfig":
    """A training config's `model` section, e.g. `configs/tiny/idefics.py`: `vision` (a CLIP-style
    `VisionConfig`), `resampler` (optional; `ResamplerConfig` fields, IDEFICS' LayerNorm / ReLU
    MLP by default), `decoder` (a `DecoderConfig` of the language model: `num_layers` text
    layers, `rope` a dict; `num_kv_heads` and `head_dim` default to IDEFICS' one head width),
    `cross_layer_interval`, `gate` ("float" | "vector"), `qk_norm`, `additional_vocab_size`,
    `image_token_id`."""
    vision = VisionConfig(**{"kind": "clip", "activation": "gelu", **dict(model["vision"])})
    resampler = None
    if model.get("resampler"):
      resampler = ResamplerConfig(**{
          "features": vision.hidden_size, "norm": "layer", "norm_eps": PERCEIVER_NORM_EPS,
          "mlp": "relu", **dict(model["resampler"])})
    d = dict(model["decoder"])
    rope = RopeConfig(**dict(d.pop("rope", None) or {}))
    text = int(d.pop("num_layers"))
    d.setdefault("num_kv_heads", d["num_heads"])
    d.setdefault("head_dim", d["hidden_size"] // d["num_heads"])
    interval = int(model.get("cross_layer_interval", 1))
    gated = gated_positions(text, interval)
    decoder = DecoderConfig(
        rope=rope, num_layers=text + len(gated), cross_attention_layers=gated,
        cross_attention_kind=GATED, cross_attention_gate=str(model.get("gate", "float")),
        cross_attention_qk_norm=bool(model.get("qk_norm", False)),
        additional_vocab_size=int(model.get("additional_vocab_size", 0)), **d)
    token = model.get("image_token_id")
    return cls(vision=vision, decoder=decoder, cross_layer_interval=interval,
               resampler=resampler, image_token_id=None if token is None else int(token))

  def to_hf(self) -> dict[str, Any]:
    """transformers' `IdeficsConfig` dict (`from_hf` reads it back)."""
    d, v, r = self.decoder, self.vision, self.resampler
    if d.num_kv_heads != d.num_heads or d.head_dim * d.num_heads != d.hidden_size:
      raise ValueError("IDEFICS' attention has as many key/value heads as heads, of width "
                       "hidden_size // num_heads")
    if d.qkv_bias or d.o_bias or d.mlp_bias or d.qk_norm or d.sliding_window is not None:
      raise ValueError("IDEFICS' language model has no biases, q/k norms or sliding window")
    vision = dict(embed_dim=v.hidden_size, image_size=v.image_size, patch_size=v.patch_size,
                  intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
                  num_attention_heads=v.num_heads, num_channels=v.num_channels,
                  hidden_act=v.activation, layer_norm_eps=v.layer_norm_eps)
    perceiver = {"use_resampler": r is not None}
    if r is not None:
      perceiver.update(resampler_n_latents=r.num_latents, resampler_depth=r.depth,
                       resampler_n_heads=r.num_heads, resampler_head_dim=r.head_dim,
                       qk_layer_norms_perceiver=r.qk_norm)
    return dict(
        architectures=["IdeficsForVisionText2Text"], model_type="idefics",
        vocab_size=d.vocab_size, additional_vocab_size=d.additional_vocab_size,
        hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
        num_hidden_layers=self.text_layers, num_attention_heads=d.num_heads,
        hidden_act=d.activation, rms_norm_eps=d.rms_norm_eps,
        max_position_embeddings=d.rope.max_position_embeddings, rope_parameters=d.rope.to_hf(),
        tie_word_embeddings=d.tie_embeddings, cross_layer_interval=self.cross_layer_interval,
        alpha_type=d.cross_attention_gate, qk_layer_norms=d.cross_attention_qk_norm,
        use_resampler=r is not None, vision_config=vision, perceiver_config=perceiver)

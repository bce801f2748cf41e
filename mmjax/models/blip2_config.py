"""BLIP-2 and InstructBLIP configurations, read from and written back to transformers'
`Blip2Config` / `InstructBlipConfig`.

Defaults are transformers' own (`Blip2VisionConfig`, `Blip2QFormerConfig`; an OPT text model)
for keys a config.json leaves out. The Q-Former's cross-attention width is the vision tower's, as
transformers sets it.
"""

import dataclasses
from typing import Any, Mapping

from mmjax.connectors.qformer import QFormerConfig
from mmjax.decoders.config import DecoderConfig, decoder_to_hf
from mmjax.encoders.vit import VisionConfig
from mmjax.nn.rope import RopeConfig

_VISION = dict(model_type="blip_2_vision_model", hidden_size=1408, intermediate_size=6144,
               num_hidden_layers=39, num_attention_heads=16, image_size=224, patch_size=14,
               hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)
_QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                layer_norm_eps=1e-12, cross_attention_frequency=2)
NUM_QUERY_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class Blip2Config:
  """BLIP-2; `InstructBlipConfig` is the same composition with a Q-Former that reads text."""

  # transformers' names of the composition and its parts (`from_hf` / `to_hf`).
  HF_TYPE = "blip-2"
  HF_ARCHITECTURE = "Blip2ForConditionalGeneration"
  HF_VISION_TYPE = "blip_2_vision_model"
  HF_QFORMER_TYPE = "blip_2_qformer"

  vision: VisionConfig  # kind 'blip2' (EVA)
  qformer: QFormerConfig
  decoder: DecoderConfig  # OPT or Llama-family
  image_token_id: int

  def __post_init__(self):
    v, q, d = self.vision, self.qformer, self.decoder
    if v.kind != "blip2":
      raise ValueError(f"BLIP-2's vision tower is kind 'blip2', not {v.kind!r}")
    if q.encoder_hidden_size != v.hidden_size:
      raise ValueError(f"the Q-Former cross-attends to {q.encoder_hidden_size} features, the "
                       f"vision tower gives {v.hidden_size}")
    if d.embed_width != d.hidden_size:
      raise ValueError(f"BLIP-2 places its {d.hidden_size}-wide query tokens among token "
                       f"embeddings of width {d.embed_width} (word_embed_proj_dim): they must "
                       "be equal")

  @property
  def tokens_per_image(self) -> int:
    """Image-token slots an image fills (`num_query_tokens`)."""
    return self.qformer.num_queries

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "Blip2Config":
    """Reads transformers' `Blip2Config` dict (config.json); `execution` sets dtypes etc."""
    v = {**_VISION, **(cfg.get("vision_config") or {}), "model_type": _VISION["model_type"]}
    vision = VisionConfig.from_hf(v, **execution)  # InstructBLIP's tower is BLIP-2's
    q = {**_QFORMER, **(cfg.get("qformer_config") or {})}
    qformer = QFormerConfig(
        hidden_size=q["hidden_size"], num_layers=q["num_hidden_layers"],
        num_heads=q["num_attention_heads"], intermediate_size=q["intermediate_size"],
        encoder_hidden_size=vision.hidden_size,
        num_queries=int(cfg.get("num_query_tokens", NUM_QUERY_TOKENS)),
        cross_attention_frequency=q["cross_attention_frequency"], activation=q["hidden_act"],
        layer_norm_eps=q["layer_norm_eps"], dropout=q["hidden_dropout_prob"],
        **cls._qformer_text(q), **execution)
    text = {"model_type": "opt", **(cfg.get("text_config") or {})}
    decoder = cls._text_from_hf(text, execution)
    image_token = cfg.get("image_token_index", cfg.get("image_token_id"))
    if image_token is None:
      raise ValueError("BLIP-2 config.json has no image_token_index: transformers >= 4.47 "
                       "places the query outputs at that token's slots")
    return cls(vision=vision, qformer=qformer, decoder=decoder, image_token_id=int(image_token))

  @classmethod
  def _text_from_hf(cls, text: Mapping[str, Any], execution) -> DecoderConfig:
    """The language model's config from `text_config` (a decoder-only one here; the Flan-T5
    compositions override this, `mmjax.models.blip2_t5`)."""
    if text.get("is_encoder_decoder") or text["model_type"] == "t5":
      raise ValueError(f"a {cls.HF_TYPE!r} config with an encoder-decoder language model "
                       f"({text['model_type']!r}) is read by the Flan-T5 family")
    return DecoderConfig.from_hf(text, **execution)

  def _text_to_hf(self) -> dict[str, Any]:
    return decoder_to_hf(self.decoder)

  @classmethod
  def _qformer_text(cls, q: Mapping[str, Any]) -> dict[str, Any]:
    """The Q-Former's text settings from its config dict (BLIP-2's: a text feed-forward when
    `use_qformer_text_input`; its stage-1 text embeddings sit outside the Q-Former)."""
    return dict(text_input=bool(q.get("use_qformer_text_input", False)))

  def _qformer_text_to_hf(self) -> dict[str, Any]:
    return dict(use_qformer_text_input=self.qformer.text_input)

  def to_hf(self) -> dict[str, Any]:
    """transformers' `Blip2Config` / `InstructBlipConfig` dict (`from_hf` reads it back)."""
    v, q = self.vision, self.qformer
    qformer = dict(model_type=self.HF_QFORMER_TYPE, hidden_size=q.hidden_size,
                   num_hidden_layers=q.num_layers, num_attention_heads=q.num_heads,
                   intermediate_size=q.intermediate_size, hidden_act=q.activation,
                   hidden_dropout_prob=q.dropout, layer_norm_eps=q.layer_norm_eps,
                   cross_attention_frequency=q.cross_attention_frequency,
                   encoder_hidden_size=v.hidden_size, **self._qformer_text_to_hf())
    return dict(architectures=[self.HF_ARCHITECTURE], model_type=self.HF_TYPE,
                num_query_tokens=q.num_queries, image_token_index=self.image_token_id,
                vision_config={**v.to_hf(), "model_type": self.HF_VISION_TYPE},
                qformer_config=qformer, text_config=self._text_to_hf())


@dataclasses.dataclass(frozen=True)
class InstructBlipConfig(Blip2Config):
  """InstructBLIP: BLIP-2's composition whose Q-Former embeds instruction ids (its own word and
  position tables) and reads them as text rows beside the queries (all see all)."""

  HF_TYPE = "instructblip"
  HF_ARCHITECTURE = "InstructBlipForConditionalGeneration"
  HF_VISION_TYPE = "instructblip_vision_model"
  HF_QFORMER_TYPE = "instructblip_qformer"

  def __post_init__(self):
    super().__post_init__()
    if not (self.qformer.text_input and self.qformer.text_vocab_size):
      raise ValueError("InstructBLIP's Q-Former has text embeddings and a text feed-forward")

  @classmethod
  def _qformer_text(cls, q):
    return dict(text_input=True, text_vocab_size=int(q.get("vocab_size", 30522)),
                text_max_positions=int(q.get("max_position_embeddings", 512)))

  def _qformer_text_to_hf(self):
    q = self.qformer
    return dict(vocab_size=q.text_vocab_size, max_position_embeddings=q.text_max_positions)


def vision_from_training(model: Mapping[str, Any], **defaults) -> VisionConfig:
  """A training config's `model.vision` (VisionConfig fields) as BLIP-2's EVA tower: kind
  'blip2', exact GELU and eps 1e-6 (and `defaults`) unless given."""
  return VisionConfig(**{"kind": "blip2", "activation": "gelu", "layer_norm_eps": 1e-6,
                         **defaults, **dict(model["vision"])})


def config_from_dict(model: Mapping[str, Any]) -> Blip2Config:
  """A training config's model section: `vision` (VisionConfig fields, see
  `vision_from_training`), `qformer` (QFormerConfig fields; its cross-attention width follows the
  tower; no text rows: a stage-2 Q-Former reads the image alone), `decoder` (DecoderConfig
  fields, `rope` a dict of RopeConfig's) and `image_token_id`. Stage 2 from a stage-1 model
  (`blip-2-retrieval`) uses the same `vision` and `qformer` sections, less the text fields."""
  vision = vision_from_training(model)
  qformer = QFormerConfig(**{**dict(model["qformer"]), "encoder_hidden_size": vision.hidden_size})
  decoder = dict(model["decoder"])
  rope = RopeConfig(**dict(decoder.pop("rope", {}) or {}))
  return Blip2Config(vision=vision, qformer=qformer, decoder=DecoderConfig(rope=rope, **decoder),
                     image_token_id=int(model["image_token_id"]))

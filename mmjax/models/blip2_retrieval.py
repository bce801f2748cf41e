"""BLIP-2's stage-1 model (transformers `Blip2ForImageTextRetrieval`, a `blip-2` config.json
whose architecture names it): the EVA tower, a Q-Former with its own BERT text embeddings, and
the heads of the three pre-training objectives.

  ITC  image features: `vision_projection` of each query output, L2-normalised `[B, Q, P]`;
       text feature: `text_projection` of the text rows' first output (the Q-Former reading the
       text alone), normalised `[N, P]`; the image-text score is the max over the queries.
  ITM  queries and text rows see each other (mask 'itm'); `itm_head` over each query output,
       averaged over the queries `[B, 2]` (1: the text matches).
  ITG  (training only: `stage1`) queries see queries, text sees every query and earlier text
       (mask 'itg'); a BERT LM head (dense, GELU, LayerNorm, the word table tied, a bias)
       predicts the next token. LAVIS keeps the head and the learned temperature `temp` beside
       the checkpoint transformers converts; transformers has neither, so a converted model
       has `stage1=False` and training configs set it.

Parameters: `encoder` (the tower), `qformer` (queries, text embeddings, layers), `head`
(`vision_projection`, `text_projection`, `itm`, and with `stage1` `itg` and `temp`).
The objective itself lives with the trainer (`mmjax.train.blip2_losses`).
"""

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.qformer import QFormer, QFormerConfig
from mmjax.encoders.vit import VisionConfig, VisionTransformer
from mmjax.models.blip2_config import _QFORMER, _VISION, NUM_QUERY_TOKENS, vision_from_training
from mmjax.models import flops as fl
from mmjax.models.family import Family
from mmjax.models.inputs import nchw_to_nhwc
from mmjax.nn.activations import get_activation
from mmjax.nn.linear import Einsum
from mmjax.nn.norms import LayerNorm

HF_ARCHITECTURE = "Blip2ForImageTextRetrieval"
INIT_TEMP = 0.07  # LAVIS' initial temperature


@dataclasses.dataclass(frozen=True)
class Blip2RetrievalConfig:
  vision: VisionConfig  # kind 'blip2' (EVA)
  qformer: QFormerConfig  # with text embeddings and the text feed-forward
  embed_dim: int = 256  # `image_text_hidden_size`: the ITC space
  # transformers drops the first `num_query_tokens` ids of `input_ids` when the config has an
  # image token (Blip2Processor puts them in front); None: the ids are the text alone.
  image_token_id: int | None = None
  text_pad_token_id: int = 0  # the Q-Former tokenizer's padding id (config.json's)
  stage1: bool = False  # the ITG head and the learned temperature (training)
  decoder_bos_token_id: int = 0  # ITG replaces each caption's first id by this ([DEC])

  def __post_init__(self):
    q = self.qformer
    if not (q.text_input and q.text_vocab_size):
      raise ValueError("BLIP-2's retrieval Q-Former needs text embeddings (text_vocab_size) and "
                       "the text feed-forward (text_input)")
    if q.encoder_hidden_size != self.vision.hidden_size:
      raise ValueError(f"the Q-Former cross-attends to {q.encoder_hidden_size} features, the "
                       f"vision tower gives {self.vision.hidden_size}")
    if self.stage1 and not 0 <= self.decoder_bos_token_id < q.text_vocab_size:
      raise ValueError(f"decoder_bos_token_id {self.decoder_bos_token_id} is outside the "
                       f"Q-Former's {q.text_vocab_size} words")

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **execution) -> "Blip2RetrievalConfig":
    """transformers' `Blip2Config` dict of a `Blip2ForImageTextRetrieval` (its `text_config`,
    a language model the retrieval model lacks, is not read)."""
    v = {**_VISION, **(cfg.get("vision_config") or {}), "model_type": _VISION["model_type"]}
    vision = VisionConfig.from_hf(v, **execution)
    q = {**_QFORMER, "vocab_size": 30522, "max_position_embeddings": 512, "pad_token_id": 0,
         **(cfg.get("qformer_config") or {})}
    qformer = QFormerConfig(
        hidden_size=q["hidden_size"], num_layers=q["num_hidden_layers"],
        num_heads=q["num_attention_heads"], intermediate_size=q["intermediate_size"],
        encoder_hidden_size=vision.hidden_size,
        num_queries=int(cfg.get("num_query_tokens", NUM_QUERY_TOKENS)),
        cross_attention_frequency=q["cross_attention_frequency"], activation=q["hidden_act"],
        layer_norm_eps=q["layer_norm_eps"], dropout=q["hidden_dropout_prob"], text_input=True,
        text_vocab_size=int(q["vocab_size"]),
        text_max_positions=int(q["max_position_embeddings"]), **execution)
    if not q.get("use_qformer_text_input", False):
      raise ValueError("a Blip2ForImageTextRetrieval config needs qformer_config."
                       "use_qformer_text_input=true (its text rows have their own feed-forward)")
    image_token = cfg.get("image_token_index", cfg.get("image_token_id"))
    return cls(vision=vision, qformer=qformer,
               embed_dim=int(cfg.get("image_text_hidden_size", 256)),
               image_token_id=None if image_token is None else int(image_token),
               text_pad_token_id=int(q.get("pad_token_id") or 0))

  def to_hf(self) -> dict[str, Any]:
    v, q = self.vision, self.qformer
    qformer = dict(model_type="blip_2_qformer", hidden_size=q.hidden_size,
                   num_hidden_layers=q.num_layers, num_attention_heads=q.num_heads,
                   intermediate_size=q.intermediate_size, hidden_act=q.activation,
                   hidden_dropout_prob=q.dropout, layer_norm_eps=q.layer_norm_eps,
                   cross_attention_frequency=q.cross_attention_frequency,
                   encoder_hidden_size=v.hidden_size, use_qformer_text_input=True,
                   vocab_size=q.text_vocab_size, max_position_embeddings=q.text_max_positions,
                   pad_token_id=self.text_pad_token_id)
    out = dict(architectures=[HF_ARCHITECTURE], model_type="blip-2",
               num_query_tokens=q.num_queries, image_text_hidden_size=self.embed_dim,
               vision_config={**v.to_hf(), "model_type": "blip_2_vision_model"},
               qformer_config=qformer)
    if self.image_token_id is not None:
      out["image_token_index"] = self.image_token_id
    return out


def l2_normalize(x: jax.Array) -> jax.Array:
  """As torch's `F.normalize` (eps 1e-12 on the norm)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class _ItgHead(nn.Module):
  """BERT's LM prediction head: `LayerNorm(act(dense(x))) @ words.T + bias`."""

  config: Blip2RetrievalConfig

  @nn.compact
  def __call__(self, x: jax.Array, words: jax.Array) -> jax.Array:
    """`x [B, T, D]`, the tied word table `words [V, D]` -> float32 logits `[B, T, V]`."""
    q = self.config.qformer
    kw = dict(dtype=jnp.dtype(q.dtype), param_dtype=jnp.dtype(q.param_dtype))
    h = Einsum("BTI,OI->BTO", (q.hidden_size, q.hidden_size), ("vit_embed", None),
               bias_shape=(q.hidden_size,), bias_axes=("vit_embed",), name="dense", **kw)(x)
    h = LayerNorm(q.layer_norm_eps, "vit_embed", jnp.dtype(q.param_dtype), name="norm")(
        get_activation(q.activation)(h))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           ("vocab",)),
                      (q.text_vocab_size,), jnp.dtype(q.param_dtype))
    logits = jnp.einsum("BTD,VD->BTV", h.astype(jnp.float32), words.astype(jnp.float32))
    return logits + bias.astype(jnp.float32)


class Blip2Heads(nn.Module):
  """`vision_projection`, `text_projection`, `itm`; with `stage1` the ITG head and `temp`."""

  config: Blip2RetrievalConfig

  def setup(self):
    cfg, q = self.config, self.config.qformer
    kw = dict(dtype=jnp.dtype(q.dtype), param_dtype=jnp.dtype(q.param_dtype))
    linear = lambda out, name: Einsum("...I,OI->...O", (out, q.hidden_size), (None, "vit_embed"),
                                      bias_shape=(out,), bias_axes=(None,), name=name, **kw)
    self.vision_projection = linear(cfg.embed_dim, "vision_projection")
    self.text_projection = linear(cfg.embed_dim, "text_projection")
    self.itm = linear(2, "itm")
    if cfg.stage1:
      self.itg = _ItgHead(cfg)
      self.temp = self.param("temp", nn.with_logical_partitioning(
          nn.initializers.constant(INIT_TEMP), ()), (), jnp.dtype(q.param_dtype))


class Blip2Retrieval(nn.Module):
  config: Blip2RetrievalConfig

  def setup(self):
    self.encoder = VisionTransformer(self.config.vision)
    self.qformer = QFormer(self.config.qformer)
    self.head = Blip2Heads(self.config)

  def vision_states(self, pixels: jax.Array) -> jax.Array:
    """`pixels [B, H, W, C]` -> the post-normed tower output, every token `[B, S, E]`."""
    return self.encoder(pixels)["last_hidden_state"]

  def image_feats(self, states: jax.Array, deterministic: bool = True) -> jax.Array:
    """`[B, S, E]` -> the queries' normalised ITC features `[B, Q, P]` float32."""
    out = self.qformer(states, deterministic=deterministic)
    return l2_normalize(self.head.vision_projection(out.queries))

  def text_feat(self, ids: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    """`ids [N, T]`, `mask [N, T]` -> the text's normalised ITC feature `[N, P]` float32 (the
    first row's output of the text read alone)."""
    out = self.qformer(None, text_ids=ids, text_mask=mask, mask="itc",
                       deterministic=deterministic)
    return l2_normalize(self.head.text_projection(out.text[:, 0]))

  def itm_logits(self, states: jax.Array, ids: jax.Array, mask: jax.Array,
                 deterministic: bool = True) -> jax.Array:
    """Image `states [B, S, E]` with texts `ids [B, T]` -> match logits `[B, 2]` float32 (the
    head over each query output, averaged over the queries)."""
    out = self.qformer(states, text_ids=ids, text_mask=mask, mask="itm",
                       deterministic=deterministic)
    return jnp.mean(self.head.itm(out.queries).astype(jnp.float32), axis=1)

  def image_feats_and_captions(self, states: jax.Array, ids: jax.Array, mask: jax.Array,
                               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """One pass under the ITG mask: the queries see only queries, so their outputs are the ITC
    image features (`image_feats`); the text rows' next-token logits `[B, T, V]` float32.
    `ids` already start with the decoder's BOS."""
    out = self.qformer(states, text_ids=ids, text_mask=mask, mask="itg",
                       deterministic=deterministic)
    words = nn.unbox(self.qformer.variables["params"]["word_embed"]["embedding"])  # tied
    return l2_normalize(self.head.vision_projection(out.queries)), self.head.itg(out.text, words)

  def temperature(self) -> jax.Array:
    return self.head.temp.astype(jnp.float32)

  def __call__(self, pixels: jax.Array, ids: jax.Array, mask: jax.Array | None = None,
               use_itm_head: bool = False) -> jax.Array:
    """transformers' `logits_per_image`: ITC `[B, N]` (the max over queries of the cosine of
    each image's queries with each of `N` texts), or with `use_itm_head` ITM `[B, 2]` (the
    i-th text with the i-th image)."""
    mask = jnp.ones(ids.shape, jnp.int32) if mask is None else mask
    states = self.vision_states(pixels)
    if use_itm_head:
      return self.itm_logits(states, ids, mask)
    if self.is_initializing():  # every parameter
      self.itm_logits(states, ids, mask)
      if self.config.stage1:
        self.image_feats_and_captions(states, ids, mask)
        self.temperature()
    sims = jnp.einsum("BQP,NP->BNQ", self.image_feats(states), self.text_feat(ids, mask))
    return jnp.max(sims, axis=-1)


@functools.lru_cache(maxsize=4)
def _compiled(config: Blip2RetrievalConfig, use_itm_head: bool):
  module = Blip2Retrieval(config)
  return jax.jit(lambda p, *a: module.apply({"params": p}, *a, use_itm_head=use_itm_head))


def hf_text_inputs(config: Blip2RetrievalConfig, inputs: Mapping[str, np.ndarray]):
  """transformers' reading of `input_ids` / `attention_mask`: with an image token in the
  config, the first `num_query_tokens` ids (Blip2Processor's image tokens) are dropped, and so
  is the mask's part in ITC (in ITM the mask already covers queries + text)."""
  ids = np.asarray(inputs["input_ids"], np.int32)
  mask = inputs.get("attention_mask")
  mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int32)
  q = config.qformer.num_queries
  if config.image_token_id is not None:
    ids = ids[:, q:]
    mask = mask[:, q:]
  return ids, mask


def config_from_dict(model: Mapping[str, Any]) -> Blip2RetrievalConfig:
  """A training config's model section: `vision` (VisionConfig fields, kind 'blip2'), `qformer`
  (QFormerConfig fields; `encoder_hidden_size`, `text_input` follow), `embed_dim`,
  `decoder_bos_token_id`; dtypes etc. apply to both; a stage-1 model (`stage1` defaults on)."""
  execution = {k: model[k] for k in ("dtype", "param_dtype", "remat_policy",
                                     "attention_backend") if k in model}
  vision = vision_from_training(model, **execution)
  qformer = QFormerConfig(**{**execution, **dict(model["qformer"]), "text_input": True,
                             "encoder_hidden_size": vision.hidden_size})
  return Blip2RetrievalConfig(vision=vision, qformer=qformer,
                              embed_dim=int(model.get("embed_dim", 256)),
                              stage1=bool(model.get("stage1", True)),
                              decoder_bos_token_id=int(model.get("decoder_bos_token_id", 0)))


class Blip2RetrievalFamily(Family):
  """transformers' `Blip2ForImageTextRetrieval` (`blip-2` config.json naming that
  architecture); trains BLIP-2's stage 1 (`train.objective='blip2_stage1'`)."""

  name = "blip-2-retrieval"
  hf_model_types = ()  # a `blip-2` model_type: claimed through its architecture
  config_cls = Blip2RetrievalConfig
  module_cls = Blip2Retrieval
  table = "blip2_retrieval"
  components = ("encoder", "qformer", "head")
  parts = {}
  stacks = {"encoder": "vision", "qformer": "qformer"}
  processor_keys = ("pixel_values",)

  def claims_hf(self, hf_config):
    return (hf_config.get("model_type") == "blip-2"
            and HF_ARCHITECTURE in (hf_config.get("architectures") or ()))

  def config_from_hf(self, hf_config, **execution):
    return Blip2RetrievalConfig.from_hf(hf_config, **execution)

  def config_from_training(self, model):
    return config_from_dict(model)

  def decoder_config(self, config):
    return None

  def text_vocab_size(self, config):
    return config.qformer.text_vocab_size

  def example_inputs(self, config):
    v = config.vision
    return (jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32),
            jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32))

  def forward_from_hf_inputs(self, config, params, inputs, use_itm_head: bool = False):
    """`pixel_values [B, C, H, W]`, `input_ids`, `attention_mask` as transformers' retrieval
    model reads them -> `logits_per_image` (ITC `[B, N]`; with `use_itm_head` ITM `[B, 2]`)."""
    pixels = jnp.asarray(nchw_to_nhwc(inputs["pixel_values"]))
    ids, mask = hf_text_inputs(config, inputs)
    out = _compiled(config, use_itm_head)(params, pixels, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(out, np.float32)

  def contrastive_forward(self, module, params, batch, rng=None):
    raise self._unsupported("train.objective clip / siglip (BLIP-2 trains 'blip2_stage1')")

  def train_flops(self, config, params, batch, trainable, attention=("encoder", "qformer")):
    """Stage 1 on `B` pairs of `T` tokens: the tower per patch (frozen: forward only, nothing
    trains before it), the Q-Former's weights per row-token over its three passes (B x (Q+T)
    under the ITG mask, B x T text alone, 3B x (Q+T) for ITM; cross-attention over the image
    tokens counted with the weights, not as products), the heads per query / token."""
    b = np.shape(batch["pixels"])[0]
    t = np.shape(batch["text_ids"])[1]
    v, q = config.vision, config.qformer
    chain = self.components
    flops = 0.0
    if "encoder" in params:
      patches = b * v.num_positions
      products = 2 * v.num_layers * v.hidden_size * v.num_positions * patches
      flops += fl.encoder_flops(params["encoder"], patches, products * ("encoder" in attention),
                                fl.per_param("encoder", trainable, chain))
    tokens = b * (q.num_queries + t) + b * t + 3 * b * (q.num_queries + t)
    if "qformer" in params:
      layers = {k: w for k, w in params["qformer"].items() if k not in ("word_embed", "pos_embed")}
      flops += fl.per_param("qformer", trainable, chain) * fl.count_params(layers) * tokens
    if "head" in params:
      flops += fl.per_param("head", trainable, chain) * fl.count_params(params["head"]) * tokens
    return float(flops)

  def abstract_train_batch(self, config, data, sds):
    b = int(data["batch_size"])
    length = int(data["max_length"])
    v = config.vision
    return {"pixels": sds((b, v.image_size, v.image_size, v.num_channels), jnp.float32),
            "text_ids": sds((b, length), jnp.int32), "text_mask": sds((b, length), jnp.int32)}

  def flop_depths(self, model):
    return {name: int(model[name]["num_layers"]) for name in ("vision", "qformer")
            if name in model and "num_layers" in model[name]}


FAMILIES = (Blip2RetrievalFamily(),)

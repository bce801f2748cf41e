"""The Q-Former (BLIP-2, InstructBLIP): learned queries read image features through a BERT.

Post-LN BERT layers (`LayerNorm(x + sublayer(x))`): self-attention over the query rows and any
text rows appended after them, cross-attention to the image features for the query rows only in
layers `i % cross_attention_frequency == 0`, and a feed-forward of the query rows' own
(`intermediate_query` / `output_query` in transformers) beside the text rows' (`intermediate` /
`output`, present only with `text_input`). The inputs (queries, then text) are layer-normed once
first (`layernorm` + dropout).

How query and text rows see each other in self-attention is the `mask` option (`QFORMER_MASKS`,
BLIP-2's stage-1 objectives): 'itm' every row sees every row (InstructBLIP's instruction rows,
image-text matching); 'itc' queries and text apart (contrastive); 'itg' queries see queries,
text sees every query and the text up to itself (captioning). Padding text rows are never keys.

Layers are scanned: a stack whose layers differ (cross-attention every f-th) scans a repeating
group of f layers (`mmjax.decoders.layout`), with a shorter group for any remainder.
"""

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.decoders.layout import CROSS, SELF, Segment, plan_layers
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import VISION_AXES
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.mlp import Mlp
from mmjax.nn.norms import LayerNorm
from mmjax.nn.stack import scan_layers

QFORMER_MASKS = ("itm", "itc", "itg")


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  encoder_hidden_size: int  # the image features' width (cross-attention keys and values)
  num_queries: int
  cross_attention_frequency: int = 2
  activation: str = "gelu"
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1  # hidden_dropout_prob (attention dropout is not modelled)
  text_input: bool = False  # the text rows' feed-forward exists (`use_qformer_text_input`)
  # InstructBLIP's own text embeddings (word + learned absolute positions from 0), read by
  # `text_ids`; 0: none (text rows come as embeddings, or not at all).
  text_vocab_size: int = 0
  text_max_positions: int = 512
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_backend: str = "xla"

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"Q-Former hidden_size {self.hidden_size} is not a multiple of "
                       f"num_heads {self.num_heads}")
    if self.cross_attention_frequency < 1:
      raise ValueError(f"cross_attention_frequency must be >= 1, got "
                       f"{self.cross_attention_frequency}")

  @property
  def cross_layers(self) -> tuple[int, ...]:
    return tuple(i for i in range(self.num_layers) if i % self.cross_attention_frequency == 0)

  @property
  def plan(self) -> tuple[Segment, ...]:
    """Segments of repeated layer groups (HF's flat `layer.{i}` via `Segment.hf_index`)."""
    return plan_layers(self.num_layers, self.cross_layers, CROSS)


@flax.struct.dataclass
class QFormerOutput:
  queries: jax.Array  # [B, Q, D] the query rows' last hidden states
  text: jax.Array | None = None  # [B, T, D] the text rows' (None without text)


def self_attention_mask(num_queries: int, text_mask: jax.Array | None, kind: str,
                        batch: int) -> jax.Array | None:
  """`[B, 1, Q+T, Q+T]` bool: which rows (queries, then text) each row sees; None when every row
  sees every row (queries alone). `text_mask [B, T]` 1 on real text rows."""
  if kind not in QFORMER_MASKS:
    raise ValueError(f"unknown Q-Former mask {kind!r}; known: {QFORMER_MASKS}")
  if text_mask is None:
    return None
  t = text_mask.shape[1]
  n = num_queries + t
  is_text = jnp.arange(n) >= num_queries  # [N]
  q_text, k_text = is_text[:, None], is_text[None, :]
  if kind == "itm":
    allowed = jnp.ones((n, n), bool)
  elif kind == "itc":
    allowed = q_text == k_text
  else:  # itg: a query sees queries; a text row sees queries and text up to itself
    allowed = ~k_text | (q_text & (jnp.arange(n)[None, :] <= jnp.arange(n)[:, None]))
  keys = jnp.concatenate([jnp.ones((batch, num_queries), bool), text_mask.astype(bool)], axis=1)
  return (allowed[None] & keys[:, None, :])[:, None]  # [B, 1, N, N]


class _Attention(nn.Module):
  """BERT attention with its output sublayer: `LayerNorm(x + o(attn(q(x), k(ctx), v(ctx))))`."""

  config: QFormerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, context, mask):
    """`x [B, T, D]`, `context [B, S, E]`, `mask [B, 1, T, S]` bool or None -> `[B, T, D]`."""
    cfg, a = self.config, VISION_AXES
    n, h, d = cfg.num_heads, cfg.hidden_size // cfg.num_heads, cfg.hidden_size
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))

    def proj(name, inputs):  # out-major [N, H, in], as torch's Linear.weight
      return Einsum("BTD,NHD->BTNH", (n, h, inputs.shape[-1]), (a.heads, a.head_dim, None),
                    bias_shape=(n, h), bias_axes=(a.heads, a.head_dim), name=name, **kw)(inputs)

    out = dot_product_attention(proj("q", x), proj("k", context), proj("v", context), mask,
                                scale=h**-0.5, backend=cfg.attention_backend)  # [B, T, N, H]
    out = Einsum("BTNH,DNH->BTD", (d, n, h), (a.embed, a.heads, a.head_dim), bias_shape=(d,),
                 bias_axes=(a.embed,), name="o", **kw)(out)
    out = nn.Dropout(cfg.dropout)(out, deterministic=self.deterministic)
    return _norm(cfg, "norm")(x + out)


class _FeedForward(nn.Module):
  """BERT's intermediate + output: `LayerNorm(x + fc2(act(fc1(x))))`."""

  config: QFormerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = Mlp(cfg.intermediate_size, cfg.activation, in_axis=VISION_AXES.embed,
            hidden_axis=VISION_AXES.mlp, dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype), name="mlp")(x)
    h = nn.Dropout(cfg.dropout)(h, deterministic=self.deterministic)
    return _norm(cfg, "norm")(x + h)


def _norm(cfg: QFormerConfig, name: str) -> LayerNorm:
  return LayerNorm(cfg.layer_norm_eps, VISION_AXES.embed, jnp.dtype(cfg.param_dtype), name=name)


class QFormerLayer(nn.Module):
  """One layer; `cross` says whether it reads the image features."""

  config: QFormerConfig
  cross: bool
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, images, mask):
    """`x [B, Q+T, D]` (queries first), `images [B, S, E]`, `mask` (`self_attention_mask`)."""
    cfg, det = self.config, self.deterministic
    q = cfg.num_queries if images is not None else 0  # no images: text rows alone
    x = _Attention(cfg, det, name="attn")(x, x, mask)
    queries, text = x[:, :q], x[:, q:]
    if self.cross and q:  # every query sees every image feature
      queries = _Attention(cfg, det, name="cross")(queries, images, None)
    if q:
      queries = _FeedForward(cfg, det, name="ffn_query")(queries)
    if text.shape[1]:
      if not cfg.text_input:
        raise ValueError("this Q-Former has no text feed-forward (text_input=False): it takes "
                         "no text rows")
      text = _FeedForward(cfg, det, name="ffn_text")(text)
    elif cfg.text_input and self.is_initializing():
      _FeedForward(cfg, det, name="ffn_text")(text)  # create its parameters
    return jnp.concatenate([queries, text], axis=1), None


class _Group(nn.Module):
  """One repeat of a segment's group of layers, each under its slot name."""

  config: QFormerConfig
  kinds: tuple[str, ...]
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, images, mask):
    for j, kind in enumerate(self.kinds):
      x, _ = QFormerLayer(self.config, kind == CROSS, self.deterministic,
                          name=f"{kind}_{j}")(x, images, mask)
    return x, None


class QFormer(nn.Module):
  """Learned queries (+ optional text rows) -> `QFormerOutput`."""

  config: QFormerConfig

  @nn.compact
  def __call__(self, images: jax.Array | None, text: jax.Array | None = None,
               text_mask: jax.Array | None = None, mask: str = "itm",
               deterministic: bool = True, text_ids: jax.Array | None = None) -> QFormerOutput:
    """`images [B, S, E]` image features; text rows as `text [B, T, D]` embeddings (word +
    position, before the input layer norm) or as `text_ids [B, T]` for the Q-Former's own
    embeddings (`text_vocab_size`), with `text_mask [B, T]` (1: real; default all real); `mask`
    one of `QFORMER_MASKS`. `images` None: the text rows alone, no queries (BLIP-2's text
    encoder, transformers' `query_length=0`; `queries` comes back `[B, 0, D]`). Dropout runs
    when not `deterministic` (a 'dropout' rng)."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if text_ids is not None:
      if text is not None:
        raise ValueError("give the Q-Former's text rows as text or as text_ids, not both")
      text = self._embed_text(text_ids)
    if images is None and text is None:
      raise ValueError("the Q-Former needs images, text rows or both")
    b = (images if images is not None else text).shape[0]
    q = cfg.num_queries if images is not None else 0
    tokens = self.param("query_tokens", nn.with_logical_partitioning(
        DEFAULT_KERNEL_INIT, (None, VISION_AXES.embed)), (cfg.num_queries, cfg.hidden_size),
        jnp.dtype(cfg.param_dtype))
    x = jnp.broadcast_to(tokens[:q].astype(dtype)[None], (b, q, cfg.hidden_size))
    if text is not None:
      if text_mask is None:
        text_mask = jnp.ones(text.shape[:2], jnp.int32)
      x = jnp.concatenate([x, text.astype(dtype)], axis=1)  # [B, Q+T, D]
    attn_mask = self_attention_mask(q, text_mask if text is not None else None, mask, b)
    x = _norm(cfg, "embed_norm")(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    images = None if images is None else images.astype(dtype)
    for segment in cfg.plan:
      block = _Group if segment.grouped else QFormerLayer
      args = (cfg, segment.kinds) if segment.grouped else (cfg, segment.kinds[0] == CROSS)
      stack = scan_layers(block, length=segment.repeats, remat_policy=cfg.remat_policy,
                          in_axes=(nn.broadcast, nn.broadcast))
      x, _ = stack(*args, deterministic, name=segment.name)(x, images, attn_mask)
    return QFormerOutput(queries=x[:, :q], text=x[:, q:] if text is not None else None)

  def _embed_text(self, ids: jax.Array) -> jax.Array:
    """`ids [B, T]` -> word + position embeddings `[B, T, D]` (positions 0..T-1)."""
    cfg = self.config
    if not cfg.text_vocab_size:
      raise ValueError("this Q-Former has no text embeddings (text_vocab_size=0): it takes no "
                       "text_ids")
    if ids.shape[1] > cfg.text_max_positions:
      raise ValueError(f"{ids.shape[1]} Q-Former text tokens exceed its "
                       f"{cfg.text_max_positions} positions")
    table = lambda rows, name: nn.Embed(
        rows, cfg.hidden_size, param_dtype=jnp.dtype(cfg.param_dtype),
        embedding_init=nn.with_logical_partitioning(DEFAULT_KERNEL_INIT,
                                                    (None, VISION_AXES.embed)), name=name)
    words = table(cfg.text_vocab_size, "word_embed")(ids)
    positions = table(cfg.text_max_positions, "pos_embed")(jnp.arange(ids.shape[1]))
    return (words + positions[None]).astype(jnp.dtype(cfg.dtype))


__all__ = ["QFORMER_MASKS", "QFormer", "QFormerConfig", "QFormerOutput", "self_attention_mask",
           "SELF", "CROSS"]

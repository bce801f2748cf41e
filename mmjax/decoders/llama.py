"""The Llama-family decoder: pre-norm blocks of GQA self-attention and a gated MLP, scanned; with
cross-attention layers among them when the config names some (Llama 3.2 Vision).

The layers run as segments of repeated groups (`mmjax.decoders.layout`): a uniform decoder is one
scanned stack, a decoder with cross-attention layers scans its repeating group. Every block takes
`(x, ctx, cache, layer_id, rows=None) -> (x, cache)` with the call's shared inputs in `ctx`
(`LayerContext`), so the target-only loss's last-layer trick (`_head_loss`) works on every
layout.
"""

import dataclasses
import importlib
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.layout import SELF, Segment, plan_layers
from mmjax.nn import axes as ax
from mmjax.nn import lora
from mmjax.nn.axes import TEXT_AXES
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.mask_spec import MaskSpec
from mmjax.nn.masks import attention_mask
from mmjax.nn.mlp import GatedMlp, Mlp
from mmjax.nn.multihead import KVCache, MultiHeadAttention, take_rows
from mmjax.nn.norms import make_norm
from mmjax.nn.rope import rope_cos_sin
from mmjax.nn.stack import scan_layers

# `head_loss(logits_fn, head_params, hidden) -> (loss, count)`, with
# `logits_fn(head_params, hidden, rows [B, C]) -> logits [B, C, V]`: a loss that asks for the
# logits of some positions only (`mmjax.train.loss.target_cross_entropy`).
HeadLoss = Callable[[Callable[[Any, jax.Array, jax.Array], jax.Array], Any, jax.Array], Any]


@flax.struct.dataclass
class DecoderOutput:
  """What a decoder (and a model built on one) returns. Unpacks as `logits, cache`."""

  logits: jax.Array | None  # [B, T, V] float32; None when `head_loss` ran
  cache: Any  # the updated cache (None without one)
  hidden: jax.Array | None = None  # [B, T, D] the last layer's output, before the final norm
  loss: Any = None  # `head_loss`'s result

  def __iter__(self):
    return iter((self.logits, self.cache))

  def __getitem__(self, index):
    return (self.logits, self.cache)[index]


@flax.struct.dataclass
class LayerContext:
  """The inputs every layer of one call shares.

  `mask`: a `MaskSpec` (no cache) or a dense `[B, 1, T, S]` mask; `rope`: (cos, sin);
  `cache_index`: where the cache is written; `layer_inputs [K, B, T, D]`: added after layers
  0..K-1 (Qwen3-VL DeepStack); `cross`: what cross-attention layers read (None: they are
  skipped, as transformers skips them without images); `generating`: a cache is in use.
  """

  mask: Any
  rope: Any
  cache_index: Any = 0
  layer_inputs: jax.Array | None = None
  cross: Any = None
  generating: bool = flax.struct.field(pytree_node=False, default=False)


class DecoderBlock(nn.Module):
  """Self-attention and an MLP (gated, or dense as Persimmon's), pre-norm."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x, ctx: LayerContext, cache: KVCache | None, layer_id=None, rows=None):
    """`x [B, T, D]` -> `[B, T, D]` and the cache; `[B, P, D]` with `rows [B, P]`: only those
    positions' outputs (`ctx.mask` then `[B, 1, P, T]`; every position is still a key)."""
    cfg = self.config
    if rows is not None and ctx.layer_inputs is not None:
      raise ValueError("rows and layer_inputs are not supported together")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    h = make_norm(cfg.norm, cfg.rms_norm_eps, param_dtype=param_dtype, name="attn_norm")(x)
    h, cache = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        axes=TEXT_AXES, qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, qk_norm=cfg.qk_norm,
        norm=cfg.norm, norm_eps=cfg.rms_norm_eps, backend=cfg.attention_backend, dtype=dtype,
        param_dtype=param_dtype, name="attn",
    )(h, ctx.mask, ctx.rope, cache, ctx.cache_index, query_rows=rows)
    if rows is not None:
      x = take_rows(x, rows)
    x = x + h
    h = make_norm(cfg.norm, cfg.rms_norm_eps, param_dtype=param_dtype, name="mlp_norm")(x)
    mlp = GatedMlp if cfg.mlp == "gated" else Mlp
    h = mlp(cfg.intermediate_size, cfg.activation, use_bias=cfg.mlp_bias, dtype=dtype,
            param_dtype=param_dtype, name="mlp")(h)
    x = x + h
    if ctx.layer_inputs is not None:  # DeepStack: added after layers 0..K-1
      k = ctx.layer_inputs.shape[0]
      add = jax.lax.dynamic_index_in_dim(ctx.layer_inputs, jnp.minimum(layer_id, k - 1),
                                         keepdims=False)
      x = x + jnp.where(layer_id < k, add.astype(x.dtype), jnp.zeros((), x.dtype))
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, ax.EMBED))
    return x, cache


def block_class(kind: str) -> type[nn.Module]:
  """The block of a layer kind: `self` here, any other kind the `BLOCK` of its own module
  `mmjax.decoders.<kind>` (e.g. `cross`, Llama 3.2 Vision's cross-attention layer)."""
  if kind == SELF:
    return DecoderBlock
  try:
    return importlib.import_module(f"mmjax.decoders.{kind}").BLOCK
  except (ModuleNotFoundError, AttributeError) as e:
    raise ValueError(f"unknown decoder layer kind {kind!r}: no BLOCK in mmjax.decoders.{kind}") \
        from e


class Group(nn.Module):
  """One repeat of a segment's group: its layers in order, each under its slot name."""

  config: DecoderConfig
  kinds: tuple[str, ...]

  @nn.compact
  def __call__(self, x, ctx: LayerContext, cache, layer_ids):
    """`cache`: {slot: the layer's cache} (or None); `layer_ids [len(kinds)]`."""
    new = {}
    for j, kind in enumerate(self.kinds):
      slot = f"{kind}_{j}"
      x, new[slot] = block_class(kind)(self.config, name=slot)(
          x, ctx, None if cache is None else cache.get(slot), layer_ids[j])
    return x, new


# The stack's extra arguments: the context is broadcast; the cache and layer ids are per layer.
_STACK_IN_AXES = (nn.broadcast, 0, 0)


def segment_stack(config: DecoderConfig, segment: Segment, length: int | None = None):
  """The scanned module class of a segment (`length` repeats; default all of them)."""
  block = Group if segment.grouped else block_class(segment.kinds[0])
  return scan_layers(block, length=segment.repeats if length is None else length,
                     remat_policy=config.remat_policy, in_axes=_STACK_IN_AXES)


def _segment_args(config: DecoderConfig, segment: Segment) -> tuple:
  return (config, segment.kinds) if segment.grouped else (config,)


def _layer_ids(segment: Segment) -> jax.Array:
  """Global layer index of every layer of the segment: `[repeats]` or `[repeats, group]`."""
  ids = segment.start + jnp.arange(segment.num_layers).reshape(segment.repeats, len(segment.kinds))
  return ids if segment.grouped else ids[:, 0]


def init_cache(config: DecoderConfig, batch: int, length: int, dtype=None) -> Any:
  """Zeros for the self-attention keys/values: `{'k', 'v': [L, B, S, K, H]}` for a uniform
  decoder, else per segment and slot (`[repeats, B, S, K, H]`); cross-attention layers get
  theirs (the images' keys/values) at prefill."""
  dtype = dtype or jnp.dtype(config.dtype)

  def zeros(layers):
    shape = (layers, batch, length, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

  def segment(seg: Segment):
    if not seg.grouped:
      return zeros(seg.repeats)
    return {slot: zeros(seg.repeats) if kind == SELF else None
            for slot, kind in zip(seg.slots, seg.kinds)}

  plan = layer_plan(config)
  if _uniform(plan):
    return segment(plan[0])
  return {seg.name: segment(seg) for seg in plan}


def self_cache_length(plan: tuple[Segment, ...], cache) -> int:
  """S of the self-attention cache `[layers, B, S, K, H]` (cross-attention layers keep the
  images' keys/values beside it, of another length)."""
  if _uniform(plan):
    return cache["k"].shape[2]
  for seg in plan:
    for slot, kind in zip(seg.slots, seg.kinds):
      if kind == SELF:
        entry = cache[seg.name][slot] if seg.grouped else cache[seg.name]
        return entry["k"].shape[2]
  raise ValueError("a decoder without self-attention layers has no cache length")


def layer_plan(config: DecoderConfig) -> tuple[Segment, ...]:
  """The decoder's segments (`mmjax.decoders.layout`)."""
  return plan_layers(config.num_layers, config.cross_attention_layers,
                     config.cross_attention_kind)


def _uniform(plan) -> bool:
  return len(plan) == 1 and not plan[0].grouped


class Decoder(nn.Module):
  """Token embeddings -> scanned blocks -> final norm -> float32 logits."""

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    param_dtype = jnp.dtype(cfg.param_dtype)
    if cfg.additional_vocab_size and cfg.extra_embeddings:
      raise ValueError("a decoder has either extra_embeddings (rows not predicted) or an "
                       "additional_vocab_size (decoupled rows), not both")
    # IDEFICS' decoupled rows are parameters of their own, few: never split over the vocabulary.
    additional_axes = (None, "embed")
    width = cfg.embed_width
    embed = lambda rows, name, axes: nn.Embed(
        rows, width, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(DEFAULT_KERNEL_INIT, axes), name=name)
    self.embedder = embed(cfg.vocab_size + cfg.extra_embeddings, "embed", ("vocab", "embed"))
    if cfg.learned_positions:  # OPT: a position table instead of RoPE
      self.pos_embedder = nn.Embed(
          cfg.learned_positions, cfg.hidden_size, param_dtype=param_dtype,
          embedding_init=nn.with_logical_partitioning(DEFAULT_KERNEL_INIT, (None, "embed")),
          name="pos_embed")
    if cfg.projects_embeddings:  # OPT's word_embed_proj_dim
      proj = lambda shape, name: Einsum(  # out-major [out, in], as torch's Linear.weight
          "BTI,OI->BTO", shape, ("embed", None) if name == "project_in" else (None, "embed"),
          dtype=jnp.dtype(cfg.dtype), param_dtype=param_dtype, name=name)
      self.project_in = proj((cfg.hidden_size, width), "project_in")
      self.project_out = proj((width, cfg.hidden_size), "project_out")
    if cfg.additional_vocab_size:
      self.embedder_additional = embed(cfg.additional_vocab_size, "embed_additional",
                                       additional_axes)
    self.plan = layer_plan(cfg)
    for segment in self.plan:  # attribute names are the parameter names ('layers', ...)
      setattr(self, segment.name,
              segment_stack(cfg, segment)(*_segment_args(cfg, segment), name=segment.name))
    self.norm = make_norm(cfg.norm, cfg.rms_norm_eps, param_dtype=param_dtype, name="norm")
    if not cfg.tie_embeddings:
      head = lambda rows, name, axes: Einsum(  # [V, D], the embedding's layout
          "BTD,VD->BTV", (rows, cfg.embed_width), axes, dtype=jnp.dtype(cfg.dtype),
          param_dtype=param_dtype, name=name)
      self.lm_head = head(cfg.vocab_size, "lm_head", ("vocab", "embed"))
      if cfg.additional_vocab_size:
        self.lm_head_additional = head(cfg.additional_vocab_size, "lm_head_additional",
                                       additional_axes)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """`tokens [B, T]` -> `[B, T, D]` in the compute dtype."""
    cfg = self.config
    if not cfg.additional_vocab_size:
      return self.embedder(tokens).astype(jnp.dtype(cfg.dtype))
    # Ids past the base table read the additional one (each lookup clipped into its own table:
    # an out-of-range gather would give NaN).
    additional = tokens >= cfg.vocab_size  # [B, T]
    base = self.embedder(jnp.where(additional, 0, tokens))
    extra = self.embedder_additional(jnp.where(additional, tokens - cfg.vocab_size, 0))
    return jnp.where(additional[..., None], extra, base).astype(jnp.dtype(cfg.dtype))

  def __call__(
      self,
      embeddings: jax.Array,
      positions: jax.Array,
      attention_mask_: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: Any = None,
      cache_index: jax.Array | int = 0,
      layer_inputs: jax.Array | None = None,
      head_loss: HeadLoss | None = None,
      cross: Any = None,
  ) -> DecoderOutput:
    """Runs the stack.

    Args:
      embeddings: `[B, T, D]` input embeddings (text, with image features merged in).
      positions: `[B, T]` RoPE positions, or `[3, B, T]` (temporal, height, width) with M-RoPE.
      attention_mask_: `[B, S]` 1 for real keys, 0 for padding; S = T without a cache, else the
        cache length.
      segment_ids: `[B, T]` packed-sample ids (training without a cache).
      cache: from `init_cache` (self-attention keys/values, written at `cache_index`), plus the
        images' keys/values of cross-attention layers after a prefill.
      layer_inputs: `[K, B, T, D]` added to the output of layers `0..K-1` (Qwen3-VL DeepStack).
      head_loss: training without a cache: the result's `loss` is `head_loss`'s, with the last
        layer and the LM head run inside it only at the positions it asks for (`_head_loss`),
        and no logits.
      cross: what cross-attention layers read (their family's inputs, e.g.
        `mmjax.decoders.cross.CrossInputs`); None skips them.
    """
    cfg = self.config
    t = embeddings.shape[1]
    x = self._inputs(embeddings, positions)
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, ax.EMBED))
    if cache is None:  # every backend reads the structure (the einsum path skips causal blocks)
      mask = MaskSpec(segment_ids, attention_mask_, causal=True, sliding_window=cfg.sliding_window)
    else:
      k_len = self_cache_length(self.plan, cache)
      mask = attention_mask(
          jnp.arange(t)[None] + cache_index, jnp.arange(k_len)[None], causal=True,
          k_valid=attention_mask_, q_segment=segment_ids, k_segment=segment_ids,
          sliding_window=cfg.sliding_window,
      )
    rope = None if cfg.learned_positions else rope_cos_sin(cfg.rope, cfg.head_dim, positions)
    ctx = LayerContext(mask, rope, cache_index,
                       layer_inputs, cross, generating=cache is not None)
    if head_loss is not None:
      if cache is not None:
        raise ValueError("head_loss is for training: it takes no cache")
      return DecoderOutput(None, None, None, self._head_loss(head_loss, x, ctx))
    x, cache = self._stack(x, ctx, cache)
    return DecoderOutput(self.logits(x), cache, x)

  def _inputs(self, embeddings: jax.Array, positions: jax.Array) -> jax.Array:
    """The first block's input: embeddings `[B, T, E]` projected in to `[B, T, D]` and, with a
    learned position table, its rows at `positions + position_offset` added."""
    cfg = self.config
    x = embeddings
    if cfg.projects_embeddings:
      x = self.project_in(x)
    if cfg.learned_positions:
      x = x + self.pos_embedder(positions + cfg.position_offset).astype(x.dtype)
    return x

  def _stack(self, x, ctx: LayerContext, cache):
    """Every segment in order; the cache keeps `init_cache`'s structure."""
    if _uniform(self.plan):
      return getattr(self, self.plan[0].name)(x, ctx, cache, _layer_ids(self.plan[0]))
    new = {}
    for segment in self.plan:
      x, new[segment.name] = getattr(self, segment.name)(
          x, ctx, None if cache is None else cache[segment.name], _layer_ids(segment))
    return x, (new if cache is not None else None)

  def _head_loss(self, head_loss: HeadLoss, x, ctx: LayerContext):
    """Runs every layer but the last on every position and hands the last one, with the final
    norm and the LM head, to `head_loss` as its `logits_fn` over the rows it asks for: the last
    layer's output at a position only feeds that position's logits, so where the loss reads no
    logits (image and prompt tokens) its queries, attention output and MLP are never computed.
    (Not when DeepStack adds inputs after the last layer, nor under partial LoRA: then all
    layers run and the head is the final norm and the LM head alone.)

    The last segment's leading repeats and the last layer are applied as functions of explicit
    slices of the stacked parameters, so that `head_loss` can differentiate them as arguments
    (a custom VJP must not close over them).
    """
    cfg = self.config
    params = nn.unbox(self.variables["params"])
    head = head_params(params)
    names = tuple(head)

    def final_logits(p, h):  # the final norm and the LM head, from `p`'s `names`
      p = {name: p[name] for name in names}
      return Decoder(cfg, parent=None).apply({"params": p}, h, method=Decoder.logits)

    # Partial LoRA masks the layers' updates by the batch's positions, which rows would reorder.
    if lora.partial_active() or (ctx.layer_inputs is not None and
                                 ctx.layer_inputs.shape[0] > cfg.num_layers - 1):
      x, _ = self._stack(x, ctx, None)
      return head_loss(lambda p, h, rows: final_logits(p, take_rows(h, rows)), head, x)
    *leading, last = self.plan
    for segment in leading:
      x, _ = getattr(self, segment.name)(x, ctx, None, _layer_ids(segment))
    stacked, ids = params[last.name], _layer_ids(last)
    r = last.repeats
    if r > 1:  # the last segment's leading repeats
      stack = segment_stack(cfg, last, r - 1)(*_segment_args(cfg, last), parent=None)
      x, _ = stack.apply({"params": jax.tree.map(lambda a: a[:r - 1], stacked)}, x, ctx, None,
                         ids[:r - 1])
    group = jax.tree.map(lambda a: a[r - 1], stacked)  # the last repeat's parameters
    group_ids = ids[r - 1]
    if not last.grouped:
      slots = [(last.kinds[0], group, group_ids)]
    else:
      slots = [(kind, group[slot], group_ids[j])
               for j, (kind, slot) in enumerate(zip(last.kinds, last.slots))]
    for kind, p, layer_id in slots[:-1]:
      x, _ = block_class(kind)(cfg, parent=None).apply({"params": p}, x, ctx, None, layer_id)
    kind, p, layer_id = slots[-1]
    # The rows get a dense mask, so the last layer attends with the xla backend whatever the
    # stack's (a few rows against every key: no T x T scores to avoid).
    block = block_class(kind)(dataclasses.replace(cfg, attention_backend="xla"), parent=None)

    def logits_fn(p, hidden, rows):  # hidden [B, T, D], rows [B, C] -> [B, C, V]
      cross = _rows_of(ctx.cross, rows)
      if "cross_states" in p:
        cross = cross.replace(states=p["cross_states"])
      # DeepStack adds nothing after the last layer here (the fallback above covers that).
      rows_ctx = ctx.replace(mask=ctx.mask.rows(rows, hidden.shape[1]), cross=cross,
                             layer_inputs=None)
      h, _ = block.apply({"params": p["last_layer"]}, hidden, rows_ctx, None, layer_id, rows=rows)
      return final_logits(p, h)

    head["last_layer"] = p
    if kind != SELF and getattr(ctx.cross, "states", None) is not None:
      # Image states are differentiated (the tower trains): a custom VJP must take them as an
      # argument, never close over them.
      head["cross_states"] = ctx.cross.states
    return head_loss(logits_fn, head, x)

  def logits(self, x: jax.Array) -> jax.Array:
    """Final norm and LM head: hidden states `[..., D]` -> float32 logits `[..., V]`. Reads only
    the parameters `head_params` picks."""
    cfg = self.config
    x = self.norm(x)
    if cfg.projects_embeddings:
      x = self.project_out(x)
    if cfg.tie_embeddings:
      x = x.astype(jnp.dtype(cfg.dtype))
      heads = (self.embedder.attend,) + (
          (self.embedder_additional.attend,) if cfg.additional_vocab_size else ())
    else:
      heads = (self.lm_head,) + ((self.lm_head_additional,) if cfg.additional_vocab_size else ())
    logits = [head(x) for head in heads]
    logits = logits[0] if len(logits) == 1 else jnp.concatenate(logits, axis=-1)  # [..., V (+ A)]
    return logits.astype(jnp.float32)


def _rows_of(cross, rows):
  """Cross-attention inputs at the query `rows [B, P]` (their own `rows` method)."""
  return None if cross is None else cross.rows(rows)


def head_params(decoder_params: dict) -> dict:
  """The subtree of a decoder's parameters that `Decoder.logits` reads: the final norm and the LM
  head (the embedding when tied), so the head can be differentiated on its own."""
  names = ("norm", "project_out", "lm_head", "lm_head_additional") if "lm_head" in decoder_params \
      else ("norm", "project_out", "embed", "embed_additional")
  return {name: decoder_params[name] for name in names if name in decoder_params}

"""The Llama-family decoder: pre-norm blocks of GQA self-attention and a gated MLP, scanned."""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.decoders.config import DecoderConfig
from mmjax.nn import axes as ax
from mmjax.nn.axes import TEXT_AXES
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.mask_spec import MaskSpec
from mmjax.nn.masks import attention_mask
from mmjax.nn.mlp import GatedMlp
from mmjax.nn.multihead import KVCache, MultiHeadAttention, take_rows
from mmjax.nn.norms import RMSNorm
from mmjax.nn.rope import rope_cos_sin
from mmjax.nn.stack import scan_layers


class DecoderBlock(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, mask, rope, cache_index, cache: KVCache | None, layer_id=None,
               layer_inputs=None, rows=None):
    """`x [B, T, D]` -> `[B, T, D]` and the cache; `[B, P, D]` with `rows [B, P]`: only those
    positions' outputs (`mask [B, 1, P, T]`; every position is still a key)."""
    cfg = self.config
    if rows is not None and layer_inputs is not None:
      raise ValueError("rows and layer_inputs are not supported together")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="attn_norm")(x)
    h, cache = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        axes=TEXT_AXES, qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, qk_norm=cfg.qk_norm,
        norm_eps=cfg.rms_norm_eps, backend=cfg.attention_backend, dtype=dtype,
        param_dtype=param_dtype, name="attn",
    )(h, mask, rope, cache, cache_index, query_rows=rows)
    if rows is not None:
      x = take_rows(x, rows)
    x = x + h
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="mlp_norm")(x)
    h = GatedMlp(cfg.intermediate_size, cfg.activation, use_bias=cfg.mlp_bias, dtype=dtype,
                 param_dtype=param_dtype, name="mlp")(h)
    x = x + h
    if layer_inputs is not None:  # DeepStack: `layer_inputs [K, B, T, D]` added after layers 0..K-1
      k = layer_inputs.shape[0]
      add = jax.lax.dynamic_index_in_dim(layer_inputs, jnp.minimum(layer_id, k - 1), keepdims=False)
      x = x + jnp.where(layer_id < k, add.astype(x.dtype), jnp.zeros((), x.dtype))
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, ax.EMBED))
    return x, cache


def init_cache(config: DecoderConfig, batch: int, length: int, dtype=None) -> KVCache:
  """Zeros for a `[L, B, S, K, H]` key/value cache."""
  shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
  dtype = dtype or jnp.dtype(config.dtype)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


# `head_loss(logits_fn, head_params, hidden) -> (loss, count)`, with
# `logits_fn(head_params, hidden, rows [B, C]) -> logits [B, C, V]`: a loss that asks for the
# logits of some positions only (`mmjax.train.loss.target_cross_entropy`).
HeadLoss = Callable[[Callable[[Any, jax.Array, jax.Array], jax.Array], Any, jax.Array], Any]

# The stack's extra arguments: mask, rope, cache index broadcast; cache, layer ids per layer;
# layer inputs broadcast.
_STACK_IN_AXES = (nn.broadcast, nn.broadcast, nn.broadcast, 0, 0, nn.broadcast)


class Decoder(nn.Module):
  """Token embeddings -> scanned blocks -> final norm -> float32 logits."""

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    param_dtype = jnp.dtype(cfg.param_dtype)
    self.embedder = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(DEFAULT_KERNEL_INIT, ("vocab", "embed")),
        name="embed",
    )
    stack = scan_layers(DecoderBlock, length=cfg.num_layers, remat_policy=cfg.remat_policy,
                        in_axes=_STACK_IN_AXES)
    self.layers = stack(cfg, name="layers")
    self.norm = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="norm")
    if not cfg.tie_embeddings:
      self.lm_head = Einsum(  # [V, D], the embedding's layout
          "BTD,VD->BTV", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
          dtype=jnp.dtype(cfg.dtype), param_dtype=param_dtype, name="lm_head",
      )

  def embed(self, tokens: jax.Array) -> jax.Array:
    """`tokens [B, T]` -> `[B, T, D]` in the compute dtype."""
    return self.embedder(tokens).astype(jnp.dtype(self.config.dtype))

  def __call__(
      self,
      embeddings: jax.Array,
      positions: jax.Array,
      attention_mask_: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
      cache_index: jax.Array | int = 0,
      layer_inputs: jax.Array | None = None,
      hidden_only: bool = False,
      head_loss: HeadLoss | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Runs the stack.

    Args:
      embeddings: `[B, T, D]` input embeddings (text, with image features merged in).
      positions: `[B, T]` RoPE positions, or `[3, B, T]` (temporal, height, width) with M-RoPE.
      attention_mask_: `[B, S]` 1 for real keys, 0 for padding; S = T without a cache, else the
        cache length.
      segment_ids: `[B, T]` packed-sample ids (training without a cache).
      cache: `[L, B, S, K, H]` keys/values; written at `cache_index`.
      layer_inputs: `[K, B, T, D]` added to the output of layers `0..K-1` (Qwen3-VL DeepStack).
      hidden_only: return the last layer's output `[B, T, D]` instead of logits; `logits` maps
        (any selection of) it to logits.
      head_loss: return `head_loss`'s result instead of logits (training, no cache): the last
        layer and the LM head run inside it, only at the positions it asks for (`_head_loss`).
    Returns:
      float32 logits `[B, T, V]` (or the hidden states, or the loss) and the updated cache.
    """
    cfg = self.config
    b, t, _ = embeddings.shape
    x = nn.with_logical_constraint(embeddings, (ax.BATCH, ax.LENGTH, ax.EMBED))
    q_index = jnp.arange(t)[None] + cache_index  # [1, T]
    k_len = cache["k"].shape[2] if cache is not None else t
    if cache is None:  # every backend reads the structure (the einsum path skips causal blocks)
      mask = MaskSpec(segment_ids, attention_mask_, causal=True, sliding_window=cfg.sliding_window)
    else:
      mask = attention_mask(
          q_index, jnp.arange(k_len)[None], causal=True, k_valid=attention_mask_,
          q_segment=segment_ids, k_segment=segment_ids, sliding_window=cfg.sliding_window,
      )
    rope = rope_cos_sin(cfg.rope, cfg.head_dim, positions)
    layer_ids = None if layer_inputs is None else jnp.arange(cfg.num_layers)
    if head_loss is not None:
      if cache is not None:
        raise ValueError("head_loss is for training: it takes no cache")
      return self._head_loss(head_loss, x, mask, rope, attention_mask_, segment_ids, layer_ids,
                             layer_inputs), None
    x, cache = self.layers(x, mask, rope, cache_index, cache, layer_ids, layer_inputs)
    return (x if hidden_only else self.logits(x)), cache

  def _head_loss(self, head_loss: HeadLoss, x, mask, rope, attention_mask_, segment_ids,
                 layer_ids, layer_inputs):
    """Runs layers `0..L-2` on every position and hands the last layer, with the final norm and
    the LM head, to `head_loss` as its `logits_fn` over the rows it asks for: the last layer's
    output at a position only feeds that position's logits, so where the loss reads no logits
    (image and prompt tokens) its queries, attention output and MLP are never computed. (Not
    when DeepStack adds inputs after the last layer: then all layers run and the head is the
    final norm and the LM head alone.)

    The layers and the head are applied as functions of explicit slices of the stacked
    parameters, so that `head_loss` can differentiate them as arguments (a custom VJP must not
    close over them).
    """
    cfg = self.config
    t = x.shape[1]
    params = nn.unbox(self.variables["params"])
    stacked = params["layers"]
    head = head_params(params)
    names = tuple(head)

    def final_logits(p, h):  # the final norm and the LM head, from `p`'s `names`
      p = {name: p[name] for name in names}
      return Decoder(cfg, parent=None).apply({"params": p}, h, method=Decoder.logits)

    last = cfg.num_layers - 1
    if layer_inputs is not None and layer_inputs.shape[0] > last:
      x, _ = self.layers(x, mask, rope, 0, None, layer_ids, layer_inputs)
      return head_loss(lambda p, h, rows: final_logits(p, take_rows(h, rows)), head, x)
    if last:
      leading = scan_layers(DecoderBlock, length=last, remat_policy=cfg.remat_policy,
                            in_axes=_STACK_IN_AXES)(cfg, parent=None)
      x, _ = leading.apply({"params": jax.tree.map(lambda a: a[:last], stacked)}, x, mask, rope,
                           0, None, None if layer_ids is None else layer_ids[:last], layer_inputs)
    # The rows get a dense mask, so the last layer attends with the xla backend whatever the
    # stack's (a few rows against every key: no T x T scores to avoid).
    block = DecoderBlock(dataclasses.replace(cfg, attention_backend="xla"), parent=None)

    def logits_fn(p, hidden, rows):  # hidden [B, T, D], rows [B, C] -> [B, C, V]
      rows_mask = attention_mask(
          rows, jnp.arange(t)[None], causal=True, k_valid=attention_mask_,
          q_segment=None if segment_ids is None else take_rows(segment_ids, rows),
          k_segment=segment_ids, sliding_window=cfg.sliding_window)
      h, _ = block.apply({"params": p["last_layer"]}, hidden, rows_mask, rope, 0, None, rows=rows)
      return final_logits(p, h)

    head["last_layer"] = jax.tree.map(lambda a: a[last], stacked)
    return head_loss(logits_fn, head, x)

  def logits(self, x: jax.Array) -> jax.Array:
    """Final norm and LM head: hidden states `[..., D]` -> float32 logits `[..., V]`. Reads only
    the parameters `head_params` picks."""
    cfg = self.config
    x = self.norm(x)
    if cfg.tie_embeddings:
      logits = self.embedder.attend(x.astype(jnp.dtype(cfg.dtype)))
    else:
      logits = self.lm_head(x)
    return logits.astype(jnp.float32)


def head_params(decoder_params: dict) -> dict:
  """The subtree of a decoder's parameters that `Decoder.logits` reads: the final norm and the LM
  head (the embedding when tied), so the head can be differentiated on its own."""
  names = ("norm", "lm_head") if "lm_head" in decoder_params else ("norm", "embed")
  return {name: decoder_params[name] for name in names}

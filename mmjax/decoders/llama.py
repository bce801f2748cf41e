"""The Llama-family decoder: pre-norm blocks of GQA self-attention and a gated MLP, scanned."""

import dataclasses
from typing import Any

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
from mmjax.nn.multihead import KVCache, MultiHeadAttention
from mmjax.nn.norms import RMSNorm
from mmjax.nn.rope import rope_cos_sin
from mmjax.nn.stack import scan_layers


class DecoderBlock(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, mask, rope, cache_index, cache: KVCache | None, layer_id=None,
               layer_inputs=None):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="attn_norm")(x)
    h, cache = MultiHeadAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        axes=TEXT_AXES, qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, qk_norm=cfg.qk_norm,
        norm_eps=cfg.rms_norm_eps, backend=cfg.attention_backend, dtype=dtype,
        param_dtype=param_dtype, name="attn",
    )(h, mask, rope, cache, cache_index)
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
    stack = scan_layers(
        DecoderBlock, length=cfg.num_layers, remat_policy=cfg.remat_policy,
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, 0, nn.broadcast),
    )
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
        (any selection of) it to logits. The train step uses this to skip non-target positions.
    Returns:
      float32 logits `[B, T, V]` (or the hidden states) and the updated cache.
    """
    cfg = self.config
    b, t, _ = embeddings.shape
    x = nn.with_logical_constraint(embeddings, (ax.BATCH, ax.LENGTH, ax.EMBED))
    q_index = jnp.arange(t)[None] + cache_index  # [1, T]
    k_len = cache["k"].shape[2] if cache is not None else t
    if cache is None and cfg.attention_backend != "xla":  # fused kernels read the structure
      mask = MaskSpec(segment_ids, attention_mask_, causal=True, sliding_window=cfg.sliding_window)
    else:
      mask = attention_mask(
          q_index, jnp.arange(k_len)[None], causal=True, k_valid=attention_mask_,
          q_segment=segment_ids, k_segment=segment_ids, sliding_window=cfg.sliding_window,
      )
    rope = rope_cos_sin(cfg.rope, cfg.head_dim, positions)
    layer_ids = None if layer_inputs is None else jnp.arange(cfg.num_layers)
    x, cache = self.layers(x, mask, rope, cache_index, cache, layer_ids, layer_inputs)
    return (x if hidden_only else self.logits(x)), cache

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

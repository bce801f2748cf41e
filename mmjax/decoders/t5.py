"""T5 / Flan-T5: mmjax's encoder-decoder language model.

Both stacks are pre-norm with T5's RMS norm (no mean, no bias) and scanned. Attention is not
scaled by `head_dim ** -0.5`; instead each stack adds a learned relative position bias
(`mmjax.nn.relative_position`) to its self-attention logits, computed once per call and shared by
every layer (transformers keeps the table in layer 0): bidirectional buckets in the encoder,
causal ones in the decoder. Decoder layers then cross-attend to the encoder's output (no bias)
and run the feed-forward (ReLU `wi`/`wo`, or gated-GELU `wi_0`/`wi_1`/`wo`).

Generation encodes the prompt once; the decoder's cache holds its self-attention keys/values
(written at `cache_index`) and, after the first call with `encoder_states`, the cross-attention
keys/values of the encoder output, which later steps read instead of recomputing.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.decoders.llama import DecoderOutput
from mmjax.decoders.t5_config import T5Config
from mmjax.nn.linear import DEFAULT_KERNEL_INIT, Einsum
from mmjax.nn.masks import attention_mask
from mmjax.nn.mlp import GatedMlp, Mlp
from mmjax.nn.norms import make_norm
from mmjax.nn.relative_position import RelativePositionBias
from mmjax.nn.stack import scan_layers

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free

T5Cache = dict[str, jax.Array]  # {'k', 'v': [L, B, S, N, H]} (+ 'cross_k', 'cross_v': [L, B, Te, N, H])


@flax.struct.dataclass
class T5Context:
  """What every layer of one stack call shares."""

  mask: jax.Array  # [B|1, 1, T, S] bool: self-attention
  bias: jax.Array  # [1, N, T, S] float32 relative position bias
  cross_states: jax.Array | None = None  # [B, Te, D] encoder output; None: keys/values cached
  cross_mask: jax.Array | None = None  # [B, 1, 1, Te] bool
  cache_index: Any = 0


def _attend(q, k, v, mask, bias):
  """`q [B, T, N, H]`, `k, v [B, S, N, H]`, `mask [B|1, 1, T, S]`, `bias [1, N, T, S] | None` ->
  `[B, T, N, H]`: softmax(q·k + bias) without T5's absent `1/sqrt(H)` scaling."""
  logits = jnp.einsum("BTNH,BSNH->BNTS", q, k).astype(jnp.float32)  # [B, N, T, S]
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask, logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("BNTS,BSNH->BTNH", probs, v)


class T5Attention(nn.Module):
  """q, k, v `[N, H, D]` and o `[D, N, H]` kernels (torch's out-major layout), no biases."""

  config: T5Config

  def setup(self):
    cfg = self.config
    n, h, d = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    proj = lambda: Einsum("BTD,NHD->BTNH", (n, h, d), ("heads", "head_dim", "embed"), **kw)
    self.q, self.k, self.v = proj(), proj(), proj()
    self.o = Einsum("BTNH,DNH->BTD", (d, n, h), ("embed", "heads", "head_dim"), **kw)

  def keys_values(self, states: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`states [B, S, D]` -> keys, values `[B, S, N, H]`."""
    return self.k(states), self.v(states)

  def __call__(self, x, k, v, mask, bias=None):
    """`x [B, T, D]` queries against `k, v [B, S, N, H]` -> `[B, T, D]`."""
    return self.o(_attend(self.q(x), k.astype(x.dtype), v.astype(x.dtype), mask, bias))


def _feed_forward(cfg: T5Config) -> nn.Module:
  kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), name="mlp")
  if cfg.gated:  # wi_0 -> gate, wi_1 -> up, wo -> down
    return GatedMlp(cfg.intermediate_size, cfg.activation, **kw)
  return Mlp(cfg.intermediate_size, cfg.activation, use_bias=False, **kw)  # wi -> fc1, wo -> fc2


def _norm(cfg: T5Config, name: str) -> nn.Module:
  return make_norm("rms", cfg.layer_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), name=name)


class EncoderBlock(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, ctx: T5Context):
    cfg = self.config
    h = _norm(cfg, "attn_norm")(x)
    attn = T5Attention(cfg, name="attn")
    x = x + attn(h, *attn.keys_values(h), ctx.mask, ctx.bias)
    x = x + _feed_forward(cfg)(_norm(cfg, "mlp_norm")(x))
    return x, None


class DecoderBlock(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, ctx: T5Context, cache: T5Cache | None):
    cfg = self.config
    h = _norm(cfg, "attn_norm")(x)
    attn = T5Attention(cfg, name="attn")
    k, v = attn.keys_values(h)  # [B, T, N, H]
    new = None
    if cache is not None:
      start = (0, ctx.cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      new = {"k": k, "v": v}  # [B, S, N, H]
    x = x + attn(h, k, v, ctx.mask, ctx.bias)
    h = _norm(cfg, "cross_norm")(x)
    cross = T5Attention(cfg, name="cross")
    if ctx.cross_states is not None:
      ck, cv = cross.keys_values(ctx.cross_states)  # [B, Te, N, H]
    else:
      ck, cv = cache["cross_k"], cache["cross_v"]
    if new is not None:
      new.update(cross_k=ck, cross_v=cv)
    x = x + cross(h, ck, cv, ctx.cross_mask)
    x = x + _feed_forward(cfg)(_norm(cfg, "mlp_norm")(x))
    return x, new


class T5Stack(nn.Module):
  """The encoder (`causal=False`) or decoder stack: relative bias, scanned layers, final norm."""

  config: T5Config
  causal: bool

  def setup(self):
    cfg = self.config
    self.relative_bias = RelativePositionBias(cfg.num_buckets, cfg.max_distance, cfg.num_heads,
                                              bidirectional=not self.causal,
                                              param_dtype=jnp.dtype(cfg.param_dtype))
    block, layers, in_axes = ((DecoderBlock, cfg.num_layers, (nn.broadcast, 0)) if self.causal
                              else (EncoderBlock, cfg.num_encoder_layers, (nn.broadcast,)))
    self.layers = scan_layers(block, length=layers, remat_policy=cfg.remat_policy,
                              in_axes=in_axes)(cfg)
    self.norm = _norm(cfg, None)

  def __call__(self, x, ctx: T5Context, cache=None, q_positions=None, k_positions=None):
    """`x [B, T, D]` -> final-normed `[B, T, D]` and the new cache (decoder)."""
    ctx = ctx.replace(bias=self.relative_bias(q_positions, k_positions))
    if self.causal:
      x, cache = self.layers(x, ctx, cache)
    else:
      x, _ = self.layers(x, ctx)
    return self.norm(x), cache


def init_cache(config: T5Config, batch: int, length: int, dtype=None) -> T5Cache:
  """Zeros for the decoder's self-attention keys/values `[L, B, length, N, H]`; the first decode
  call with `encoder_states` adds the cross-attention ones."""
  shape = (config.num_layers, batch, length, config.num_heads, config.head_dim)
  dtype = dtype or jnp.dtype(config.dtype)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


class T5(nn.Module):
  """The language model: shared embedding, encoder, decoder, LM head (tied or not)."""

  config: T5Config

  def setup(self):
    cfg = self.config
    param_dtype = jnp.dtype(cfg.param_dtype)
    self.embedder = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(DEFAULT_KERNEL_INIT, ("vocab", "embed")),
        name="embed")
    self.encoder = T5Stack(cfg, causal=False)
    self.decoder = T5Stack(cfg, causal=True)
    if not cfg.tie_embeddings:
      self.lm_head = Einsum("BTD,VD->BTV", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                            dtype=jnp.dtype(cfg.dtype), param_dtype=param_dtype)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """`tokens [B, T]` -> `[B, T, D]` in the compute dtype."""
    return self.embedder(tokens).astype(jnp.dtype(self.config.dtype))

  def encode(self, embeddings: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """`embeddings [B, T, D]`, `mask [B, T]` (1 for real tokens; padding on either side) ->
    the encoder's output `[B, T, D]`. Positions are the row indices, padding included, as in
    transformers."""
    b, t = embeddings.shape[:2]
    mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
    positions = jnp.arange(t)
    ctx = T5Context(mask=mask[:, None, None, :], bias=None)
    return self.encoder(embeddings, ctx, q_positions=positions, k_positions=positions)[0]

  def decode(self, decoder_ids: jax.Array, encoder_states: jax.Array | None,
             encoder_mask: jax.Array | None, decoder_mask: jax.Array | None = None,
             cache: T5Cache | None = None, cache_index: Any = 0) -> DecoderOutput:
    """`decoder_ids [B, T]` -> float32 logits `[B, T, V]` (and the cache).

    `encoder_states [B, Te, D]` (None: the cache's cross-attention keys/values), `encoder_mask
    [B, Te]`; `decoder_mask [B, S]` masks padded decoder keys (S = T, or the cache length)."""
    b, t = decoder_ids.shape
    s = t if cache is None else cache["k"].shape[2]
    q_positions = jnp.arange(t) + cache_index
    k_positions = jnp.arange(s)
    te = encoder_states.shape[1] if encoder_states is not None else cache["cross_k"].shape[2]
    encoder_mask = jnp.ones((b, te), bool) if encoder_mask is None else encoder_mask
    ctx = T5Context(
        mask=attention_mask(q_positions, k_positions, causal=True, k_valid=decoder_mask),
        bias=None, cross_states=encoder_states,
        cross_mask=encoder_mask.astype(bool)[:, None, None, :], cache_index=cache_index)
    x, cache = self.decoder(self.embed(decoder_ids), ctx, cache, q_positions, k_positions)
    return DecoderOutput(self.logits(x), cache, x)

  def logits(self, x: jax.Array) -> jax.Array:
    """The final-normed decoder output `[..., D]` -> float32 logits `[..., V]`."""
    cfg = self.config
    if cfg.scale_decoder_outputs:
      x = x * cfg.hidden_size ** -0.5
    head = self.embedder.attend if cfg.tie_embeddings else self.lm_head
    return head(x.astype(jnp.dtype(cfg.dtype))).astype(jnp.float32)

  def __call__(self, embeddings, attention_mask_, decoder_ids, decoder_mask=None,
               cache=None, cache_index=0) -> DecoderOutput:
    """Encoder input `embeddings [B, T, D]` (token embeddings, with image features merged in
    by a VLM), `attention_mask_ [B, T]`, `decoder_ids [B, Td]` -> the decoder's output."""
    states = self.encode(embeddings, attention_mask_)
    return self.decode(decoder_ids, states, attention_mask_, decoder_mask, cache, cache_index)

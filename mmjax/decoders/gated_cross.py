"""Flamingo's gated cross-attention layer (GATED XATTN-DENSE; transformers' IDEFICS
`IdeficsGatedCrossAttentionLayer`), the `gated_cross` layer kind.

Pre-norm cross-attention from the text to the image states (keys and values from the states'
own width, optional RMS q/k norms over head_dim, no RoPE); its output is zeroed for text tokens
that see no image (`CrossInputs.row_mask`, transformers' `cross_attention_gate`), then
`x + tanh(attn_gate) * attn`; then the gated MLP, `x + tanh(mlp_gate) * mlp`, for every token.
The gates are zero at initialisation, so a fresh layer adds nothing and the model equals its
language model; they are one scalar (`cross_attention_gate="float"`) or one per channel
("vector"). Flamingo inserts such a layer before every `cross_layer_interval`-th layer of the
language model, in addition to it (Llama 3.2 Vision's `cross` kind replaces the layer instead).
"""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.cross import gate
from mmjax.decoders.llama import LayerContext
from mmjax.nn import axes as ax
from mmjax.nn.axes import TEXT_AXES
from mmjax.nn.cross_attention import CrossAttention
from mmjax.nn.mlp import GatedMlp
from mmjax.nn.multihead import take_rows
from mmjax.nn.norms import RMSNorm

GATES = ("float", "vector")


class GatedCrossDecoderBlock(nn.Module):
  """See the module docstring; called as every decoder layer kind is."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x, ctx: LayerContext, cache, layer_id=None, rows=None):
    """`x [B, T, D]` -> `[B, T, D]` (`[B, P, D]` at `rows [B, P]`, with `ctx.cross` already at
    those rows) and the images' keys/values when generating (else None)."""
    cross = ctx.cross
    if cross is None:  # a batch without images: nothing to attend to, the gates add nothing
      return (x if rows is None else take_rows(x, rows)), cache
    cfg = self.config
    if cfg.cross_attention_gate not in GATES:
      raise ValueError(f"cross_attention_gate {cfg.cross_attention_gate!r}; expected one of "
                       f"{GATES}")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    per_channel = cfg.hidden_size if cfg.cross_attention_gate == "vector" else None
    if rows is not None:  # a token's output depends on its own input and the images only
      x = take_rows(x, rows)
    attn = CrossAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        axes=TEXT_AXES, qk_norm=cfg.cross_attention_qk_norm, norm_eps=cfg.rms_norm_eps,
        backend=cfg.attention_backend, dtype=dtype, param_dtype=param_dtype, name="attn")
    kv = cache if cross.states is None else attn.keys_values(cross.states)
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="attn_norm")(x)
    h = attn(h, cross.mask, kv=kv) * cross.row_mask[..., None].astype(x.dtype)  # [B, T, D]
    x = x + jnp.tanh(gate(self, "attn_gate", param_dtype, per_channel)).astype(x.dtype) * h
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="mlp_norm")(x)
    h = GatedMlp(cfg.intermediate_size, cfg.activation, use_bias=cfg.mlp_bias, dtype=dtype,
                 param_dtype=param_dtype, name="mlp")(h)
    x = x + jnp.tanh(gate(self, "mlp_gate", param_dtype, per_channel)).astype(x.dtype) * h
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, ax.EMBED))
    return x, (kv if ctx.generating else None)


BLOCK = GatedCrossDecoderBlock  # the `gated_cross` layer kind (`mmjax.decoders.llama.block_class`)

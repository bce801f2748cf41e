"""Cross-attention decoder layers: text tokens read image states inside the language model.

Llama 3.2 Vision's kind (`cross`, `MllamaCrossAttentionDecoderLayer`): pre-norm cross-attention
with per-head RMS q/k norms and no RoPE, `x + tanh(attn_gate) * attn`, then the gated MLP,
`x + tanh(mlp_gate) * (row_mask * mlp)`, where `row_mask` zeroes text tokens that see no image
(after the MLP only, as the reference does: such a token's attention still reads every image key
and its result is kept). The layer replaces a self-attention layer at its index.

Keys and values of the images come from `CrossInputs.states` (training, prefill) or from the
layer's cache (decode steps: computed once at prefill and carried in the generation state).
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import LayerContext
from mmjax.nn import axes as ax
from mmjax.nn.axes import TEXT_AXES
from mmjax.nn.cross_attention import CrossAttention
from mmjax.nn.mask_spec import CrossMaskSpec
from mmjax.nn.mlp import GatedMlp
from mmjax.nn.multihead import take_rows
from mmjax.nn.norms import RMSNorm


@flax.struct.dataclass
class CrossInputs:
  """What the cross-attention layers of one call read.

  `states [B, S, D]`: image states, projected to the decoder's width (None at decode steps: the
  cache holds their keys/values); `mask`: which image states each text token sees, a dense
  boolean `[B, 1, T, S]` or a `CrossMaskSpec` (rows that see nothing attend every key);
  `row_mask [B, T]`: 1 where a text token sees an image.
  """

  states: jax.Array | None
  mask: jax.Array | CrossMaskSpec
  row_mask: jax.Array

  def rows(self, rows: jax.Array) -> "CrossInputs":
    """The inputs of some queries only, `rows [B, P]`."""
    if isinstance(self.mask, CrossMaskSpec):
      mask = CrossMaskSpec(take_rows(self.mask.q_group, rows), self.mask.k_group)
    else:
      mask = jnp.take_along_axis(self.mask, rows[:, None, :, None], axis=2)  # [B, 1, P, S]
    return self.replace(mask=mask, row_mask=take_rows(self.row_mask, rows))


def gate(module: nn.Module, name: str, param_dtype, features: int | None = None) -> jax.Array:
  """A gate, zero at initialisation so a fresh layer adds nothing: a scalar `[1]`, or one per
  channel `[features]`."""
  shape, axes = ((1,), (None,)) if features is None else ((features,), (TEXT_AXES.embed,))
  return module.param(name, nn.with_logical_partitioning(nn.initializers.zeros_init(), axes),
                      shape, param_dtype)


class CrossDecoderBlock(nn.Module):
  """Llama 3.2 Vision's cross-attention layer (see the module docstring)."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x, ctx: LayerContext, cache, layer_id=None, rows=None):
    """`x [B, T, D]` -> `[B, T, D]` (`[B, P, D]` at `rows [B, P]`, with `ctx.cross` already at
    those rows) and the images' keys/values when generating (else None)."""
    cross = ctx.cross
    if cross is None:  # no images in the batch: the layer is skipped, as in transformers
      return (x if rows is None else take_rows(x, rows)), cache
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if rows is not None:  # a token's output depends on its own input and the images only
      x = take_rows(x, rows)
    attn = CrossAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        axes=TEXT_AXES, qk_norm=True, norm_eps=cfg.rms_norm_eps, backend=cfg.attention_backend,
        dtype=dtype, param_dtype=param_dtype, name="attn")
    kv = cache if cross.states is None else attn.keys_values(cross.states)
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="attn_norm")(x)
    h = attn(h, cross.mask, kv=kv)  # [B, T, D]
    x = x + jnp.tanh(gate(self, "attn_gate", param_dtype)).astype(x.dtype) * h
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=param_dtype, name="mlp_norm")(x)
    h = GatedMlp(cfg.intermediate_size, cfg.activation, use_bias=cfg.mlp_bias, dtype=dtype,
                 param_dtype=param_dtype, name="mlp")(h)
    h = h * cross.row_mask[..., None].astype(h.dtype)
    x = x + jnp.tanh(gate(self, "mlp_gate", param_dtype)).astype(x.dtype) * h
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.LENGTH, ax.EMBED))
    return x, (kv if ctx.generating else None)


BLOCK = CrossDecoderBlock  # the `cross` layer kind (`mmjax.decoders.llama.block_class`)

"""RMSNorm and LayerNorm with transformers' numerics (statistics in float32)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
  """`x / rms(x) * scale`, statistics in float32, cast back before the scale (as Llama does)."""

  eps: float = 1e-6
  axis_name: str = "embed"
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
        (x.shape[-1],), self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


class LayerNorm(nn.Module):
  """Biased-variance layer norm with scale and bias, statistics in float32."""

  eps: float = 1e-5
  axis_name: str = "embed"
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
        (features,), self.param_dtype,
    )
    bias = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
        (features,), self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


NORMS = {"rms": RMSNorm, "layer": LayerNorm}


def make_norm(kind: str, eps: float, axis_name: str = "embed", param_dtype: Any = jnp.float32,
              name: str | None = None) -> nn.Module:
  """The norm a config names: "rms" (Llama: a scale) or "layer" (Persimmon: scale and bias)."""
  if kind not in NORMS:
    raise ValueError(f"unknown norm {kind!r}; known: {sorted(NORMS)}")
  return NORMS[kind](eps, axis_name, param_dtype, name=name)

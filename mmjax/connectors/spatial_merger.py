"""Mistral3's projector: RMSNorm, a learned merge of each k x k block of patches, LLaVA's MLP.

Images of any size share one packed sequence (`mmjax.encoders.pixtral_vit`), so which patches
form a block is computed on the host (`merge_index`) and gathered here. The merged vector is laid
out feature-major, then block row, then block column, as torch's `unfold` lays it out.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.connectors.projector import Projector, ProjectorConfig
from mmjax.nn.linear import Einsum
from mmjax.nn.norms import RMSNorm


@dataclasses.dataclass(frozen=True)
class SpatialMergerConfig:
  projector: ProjectorConfig  # the MLP after the merge (its in_features: the tower's width)
  merge_size: int = 2
  norm_eps: float = 1e-6  # transformers takes the text config's rms_norm_eps


def merge_index(grids, merge_size: int) -> np.ndarray:
  """Patch grids `[I, 2]` (rows, cols; images packed in order, each row-major) -> `[M, k*k]`
  int32: for each merged token (images in order, each block grid row-major) its patches in
  (block row, block column) order. Rows and columns past a multiple of k are dropped, as
  `unfold` drops them."""
  k = merge_size
  index, first = [], 0
  for rows, cols in np.asarray(grids, np.int64).reshape(-1, 2):
    r = np.arange(rows // k)[:, None, None, None] * k + np.arange(k)[None, None, :, None]
    c = np.arange(cols // k)[None, :, None, None] * k + np.arange(k)[None, None, None, :]
    index.append((first + r * cols + c).reshape(-1, k * k))  # [rows/k * cols/k, k*k]
    first += rows * cols
  if not index:
    return np.zeros((0, k * k), np.int32)
  return np.concatenate(index).astype(np.int32)


class SpatialMerger(nn.Module):
  """`features [N, D]` (packed patches) and `merge_index [M, k*k]` -> `[M, D_text]`."""

  config: SpatialMergerConfig

  @nn.compact
  def __call__(self, x: jax.Array, index: jax.Array) -> jax.Array:
    cfg = self.config
    p = cfg.projector
    d = x.shape[-1]
    x = RMSNorm(cfg.norm_eps, "vit_embed", jnp.dtype(p.param_dtype), name="norm")(x)
    blocks = x[index]  # [M, k*k, D]
    merged = jnp.swapaxes(blocks, 1, 2).reshape(index.shape[0], -1)  # [M, D*k*k], feature-major
    merged = Einsum("...F,DF->...D", (d, merged.shape[-1]), ("vit_embed", None),
                    dtype=jnp.dtype(p.dtype), param_dtype=jnp.dtype(p.param_dtype),
                    name="merge")(merged)  # [M, D]
    return Projector(p, name="mlp")(merged)

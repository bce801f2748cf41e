"""LLaVA-OneVision's host feature layout: its bilinear taps, mixed in JAX, reproduce torch's
`interpolate(mode="bilinear")` (the anyres_max shrink and the video pooling) within float32
rounding, and features taken as they are come back exactly."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mmjax.models import onevision_layout as layout
from mmjax.models.llava_onevision import mix_features

# (rows, cols) -> (out rows, out cols): shrinks as anyres_max_N makes them, and video pooling
SIZES = [((12, 12), (6, 6)), ((8, 7), (4, 3)), ((30, 11), (13, 4)), ((27, 27), (14, 14)),
         ((4, 4), (2, 2)), ((3, 3), (2, 2)), ((9, 9), (5, 5)), ((16, 48), (7, 21)),
         ((5, 40), (2, 19)), ((20, 7), (20, 7))]


@pytest.mark.parametrize("size,out", SIZES)
def test_bilinear_mix_equals_torch_interpolate(size, out):
  rng = np.random.default_rng(0)
  d = 16
  grid = rng.normal(size=(*size, d)).astype(np.float32)  # [R, C, D]
  ref = torch.nn.functional.interpolate(torch.tensor(grid).permute(2, 0, 1)[None], list(out),
                                        mode="bilinear")[0].permute(1, 2, 0).reshape(-1, d)
  rows = np.arange(size[0] * size[1]).reshape(size)
  index, weights = layout.bilinear(rows, *out)
  ours = np.asarray(mix_features(jnp.asarray(grid.reshape(-1, d)), jnp.asarray(index),
                                 jnp.asarray(weights)))
  # torch fuses multiply-adds where it pleases; the taps and weights are its own
  np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-6)


def test_copies_come_back_exactly():
  rng = np.random.default_rng(1)
  flat = rng.normal(size=(10, 8)).astype(np.float32)
  index, weights = layout.copies([3, 0, 9])
  np.testing.assert_array_equal(
      np.asarray(mix_features(jnp.asarray(flat), jnp.asarray(index), jnp.asarray(weights))),
      flat[[3, 0, 9]])


def test_taps_are_torch_source_coordinates():
  """1-D: taps and weights give torch's output bit for bit (its kernel computes
  `fma(x0, w0, x1 * w1)`, with the source coordinate rounded once)."""
  rng = np.random.default_rng(2)
  for n_in, n_out in [(12, 5), (7, 3), (27, 14), (30, 13), (9, 5), (48, 21)]:
    x = rng.normal(size=(64, n_in)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.tensor(x)[None, :, None], [1, n_out],
                                          mode="bilinear")[0, :, 0].numpy()
    i0, i1, w0, w1 = layout.taps(n_in, n_out)
    fused = (x[:, i0].astype(np.float64) * w0 + (x[:, i1] * w1).astype(np.float64))
    np.testing.assert_array_equal(fused.astype(np.float32), ref)

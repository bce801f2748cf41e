"""The decode roofline: per-chip bytes from shardings, tokens/s from HBM bandwidth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax import serving_cost


def _sds(shape, dtype, sharding=None):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _mesh():
  return Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "tensor"))


def test_per_chip_bytes_follow_the_sharding():
  mesh = _mesh()
  tree = {"split": _sds((8, 6), jnp.bfloat16, NamedSharding(mesh, P("tensor", None))),
          "both": _sds((8, 6), jnp.float32, NamedSharding(mesh, P("data", "tensor"))),
          "whole": _sds((8, 6), jnp.float32, NamedSharding(mesh, P())),
          "plain": _sds((3,), jnp.int32)}
  assert serving_cost.per_chip_bytes(tree) == 4 * 6 * 2 + 4 * 3 * 4 + 8 * 6 * 4 + 3 * 4


def test_decode_reads_the_head_not_the_embedding_unless_tied():
  untied = {"decoder": {"embed": 1, "layers": 2, "norm": 3, "lm_head": 4}, "encoder": 5}
  assert serving_cost.decode_weights(untied) == {"layers": 2, "norm": 3, "lm_head": 4}
  tied = {"decoder": {"embed": 1, "layers": 2, "norm": 3}, "encoder": 5}
  assert serving_cost.decode_weights(tied) == {"embed": 1, "layers": 2, "norm": 3}


def test_roofline_by_hand():
  mesh = _mesh()
  tensor = NamedSharding(mesh, P(None, "tensor"))
  params = {"decoder": {"embed": {"embedding": _sds((1000, 64), jnp.bfloat16, tensor)},
                        "layers": {"w": _sds((4, 64, 256), jnp.bfloat16, NamedSharding(
                            mesh, P(None, None, "tensor")))},
                        "lm_head": {"kernel": _sds((1000, 64), jnp.bfloat16, tensor)}},
            "encoder": {"w": _sds((10**6,), jnp.float32)}}
  cache = {k: _sds((4, 8, 100, 2, 16), jnp.bfloat16, NamedSharding(mesh, P(None, "data")))
           for k in ("k", "v")}
  r = serving_cost.decode_roofline(params, cache, batch=8, chips=4, chip="v5e")
  weights = 4 * 64 * 128 * 2 + 1000 * 32 * 2  # layers split over tensor=2, head over tensor=2
  kv = 2 * 4 * 4 * 100 * 2 * 16 * 2  # rows split over data=2
  assert (r.weight_bytes, r.cache_bytes) == (weights, kv)
  assert r.step_s == pytest.approx((weights + kv) / 819e9)
  assert r.tokens_per_s_per_chip == pytest.approx(8 / r.step_s / 4)
  assert "tokens/s per chip" in r.describe()


def test_unknown_chip_is_named():
  with pytest.raises(ValueError, match="'v9'"):
    serving_cost.decode_roofline({"decoder": {}}, {}, 1, 1, "v9")


def test_fsdp_split_weights_are_read_whole_tensor_split_ones_in_part():
  """FSDP gathers a weight onto every chip before its product; tensor parallelism does not."""
  mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("fsdp", "tensor"))
  w = _sds((8, 6), jnp.float32, NamedSharding(mesh, P("fsdp", "tensor")))
  assert serving_cost.per_chip_bytes(w) == 4 * 3 * 4
  assert serving_cost.per_chip_bytes(w, gathered=("data", "fsdp")) == 8 * 3 * 4
  params = {"decoder": {"layers": {"w": w}}}
  r = serving_cost.decode_roofline(params, {}, batch=4, chips=4, chip="v5p")
  assert r.weight_bytes == 8 * 3 * 4 and r.cache_bytes == 0

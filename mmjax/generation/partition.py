"""Tensor-parallel parameters for generation: logical axis names -> a 'tensor' mesh axis.

A small rule table until `mmjax.sharding` (the training rule tables) is shared with generation;
names without a rule (embed, head_dim, layers, every vision axis) stay replicated.
"""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

TENSOR_RULES = (("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"),
                ("vocab", "tensor"))


def logical_axes(family, config) -> dict:
  """The logical axis names of every parameter (`PartitionSpec`s of names), without computing."""
  module = family.build(config)
  boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                             *family.example_inputs(config)))
  return nn.get_partition_spec(boxed)["params"]


def tensor_mesh(tensor: int, data: int = 1) -> Mesh:
  """A `('data', 'tensor')` mesh over the first `data * tensor` devices."""
  devices = jax.devices()
  if data * tensor > len(devices):
    raise ValueError(f"a {data}x{tensor} mesh needs {data * tensor} devices, have {len(devices)}")
  return Mesh(np.asarray(devices[:data * tensor]).reshape(data, tensor), ("data", "tensor"))


def shard_params(family, config, params, mesh: Mesh, rules=TENSOR_RULES) -> dict:
  """Places `params` on `mesh`, each axis split as its logical name's rule says."""
  shardings = nn.logical_to_mesh_sharding(logical_axes(family, config), mesh, rules)
  for path, (leaf, sharding) in _zip_leaves(params, shardings):
    for dim, axis in zip(leaf.shape, sharding.spec):
      size = np.prod([mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis or ())])
      if dim % size:
        raise ValueError(f"parameter {path} {leaf.shape}: axis of size {dim} does not divide "
                         f"over {size} devices of mesh axis {axis!r}")
  return jax.device_put(params, shardings)


def _zip_leaves(params, shardings):
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  shard_leaves = jax.tree_util.tree_leaves(shardings)
  for (path, leaf), sharding in zip(flat, shard_leaves):
    yield "/".join(str(getattr(k, "key", k)) for k in path), (leaf, sharding)

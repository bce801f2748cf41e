"""Meshes and logical-axis rules.

Parameters and activations carry logical axis names (`embed`, `heads`, `mlp`, `vocab`, `layers`,
`vit_embed`, ...). A rule table maps each name to mesh axes, so a sharding strategy is a table,
not code. Mesh sizes come from the config: `mesh.data`, `mesh.fsdp`, `mesh.tensor` within a slice
(-1 = fill with the remaining devices) and `mesh.dcn_data`, `mesh.dcn_fsdp` across slices.
"""

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both

Rules = tuple[tuple[str, Any], ...]

# Fully sharded data parallel: weights split over `fsdp` on their model dimension, batch over
# data x fsdp. Vision towers follow the same table through their own names.
FSDP_RULES: Rules = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_vit_embed", None),
    ("embed", "fsdp"), ("vit_embed", "fsdp"),
    ("lora_rank", "fsdp"),  # after `embed`: a factor with an embed axis shards that one
    ("heads", None), ("kv_heads", None), ("head_dim", None),
    ("vit_heads", None), ("vit_head_dim", None),
    ("mlp", None), ("vit_mlp", None),
    ("vocab", None),
    ("layers", None),
)

# FSDP plus tensor parallelism (Megatron-style: heads and MLP columns over `tensor`).
FSDP_TP_RULES: Rules = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_vit_embed", None),
    ("embed", "fsdp"), ("vit_embed", "fsdp"),
    ("lora_rank", "fsdp"),  # after `embed`: a factor with an embed axis shards that one
    ("heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None),
    ("vit_heads", "tensor"), ("vit_head_dim", None),
    ("mlp", "tensor"), ("vit_mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)

RULE_TABLES: dict[str, Rules] = {"fsdp": FSDP_RULES, "fsdp_tp": FSDP_TP_RULES}


def rules_for(name: str) -> Rules:
  if name not in RULE_TABLES:
    raise ValueError(f"unknown sharding rules {name!r}; known: {sorted(RULE_TABLES)}")
  return RULE_TABLES[name]


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves one -1 in `sizes` (data/fsdp/tensor) so the product is `num_devices`."""
  shape = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
  fill = [a for a, s in shape.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {fill}")
  known = int(np.prod([s for s in shape.values() if s != -1]))
  if fill:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not divide by the fixed mesh axes {shape}")
    shape[fill[0]] = num_devices // known
  if int(np.prod(list(shape.values()))) != num_devices:
    raise ValueError(f"mesh {shape} needs {int(np.prod(list(shape.values())))} devices, "
                     f"have {num_devices}")
  return shape


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; `dcn_*` sizes > 1 lay slices out along that axis."""
  devices = list(devices if devices is not None else jax.devices())
  dcn = {axis: int(mesh_cfg.get(f"dcn_{axis}", 1)) for axis in MESH_AXES}
  num_slices = int(np.prod(list(dcn.values())))
  if len(devices) % num_slices:
    raise ValueError(f"{len(devices)} devices do not split into {num_slices} slices")
  ici = mesh_shape(mesh_cfg, len(devices) // num_slices)
  ici_shape = [ici[a] for a in MESH_AXES]
  if num_slices > 1:
    array = mesh_utils.create_hybrid_device_mesh(
        ici_shape, [dcn[a] for a in MESH_AXES], devices=devices)
  else:
    try:
      array = mesh_utils.create_device_mesh(ici_shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
      array = np.array(devices).reshape(ici_shape)  # CPU / unknown topologies
  return Mesh(array, MESH_AXES)


def logical_sharding(logical_specs: Any, mesh: Mesh, rules: Rules) -> Any:
  """A tree of logical PartitionSpecs -> the same tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())

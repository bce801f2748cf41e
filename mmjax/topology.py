"""TPU slice names (`v5p-64`, `v5e-256`, `2xv5p-128`) -> compile-only devices and chip facts.

Names follow Cloud TPU's accelerator types: for v4 and v5p the number counts TensorCores (two
per chip, fused into one "megacore" JAX device), for v5e and v6e it counts chips. A `Nx` prefix
asks for N slices joined over the data-center network (multi-slice). Devices come from libtpu
(`jax.experimental.topologies`), so this runs on a CPU-only host with the `tpu` extra installed.
"""

import dataclasses
import os
import re

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  generation: str  # libtpu's name in topology strings ('v4', 'v5', 'v5e', 'v6e')
  hbm_bytes: int  # per chip
  peak_bf16_flops: float  # per chip, dense
  cores_per_name_unit: int  # 2 when the slice name counts TensorCores (megacore chips)
  dims: int  # torus dimensions (3 for v4 / v5p, 2 for v5e / v6e)


CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32 * GIB, 275e12, 2, 3),
    "v5p": ChipSpec("v5", 95 * GIB, 459e12, 2, 3),
    "v5e": ChipSpec("v5e", 16 * GIB, 197e12, 1, 2),
    "v6e": ChipSpec("v6e", 32 * GIB, 918e12, 1, 2),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given, e.g. '2xv5p-128'
  chip: str  # key of CHIPS
  num_slices: int
  chips_per_slice: int
  shape: tuple[int, ...]  # chips per torus dimension within a slice

  @property
  def spec(self) -> ChipSpec:
    return CHIPS[self.chip]

  @property
  def num_chips(self) -> int:
    return self.num_slices * self.chips_per_slice

  @property
  def topology_name(self) -> str:
    return f"{self.spec.generation}:{'x'.join(map(str, self.shape))}"

  @property
  def chips_per_host(self) -> tuple[int, int, int]:
    if self.chips_per_slice == 8 and self.spec.dims == 2:
      return (2, 4, 1)  # v5e-8 / v6e-8: one host with 8 chips
    if self.chips_per_slice < 4:
      return (*self.shape, 1)[:3] if self.spec.dims == 2 else self.shape
    return (2, 2, 1)

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Torus wrap-around links: full cubes (v4 / v5p from 4x4x4) and full 16-chip v5e/v6e rows."""
    if self.spec.dims == 3:
      return (all(d >= 4 for d in self.shape),) * 3
    return tuple(d == 16 for d in self.shape) + (False,)


def _torus_shape(chips: int, dims: int) -> tuple[int, ...]:
  """Powers of two laid out as Cloud TPU does: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ..."""
  if chips & (chips - 1):
    raise ValueError(f"{chips} chips: only power-of-two slices are supported")
  if dims == 2:
    shape = [1, 1]
    while shape[0] * shape[1] < chips:
      shape[0 if shape[0] < shape[1] else 1] *= 2
    return tuple(shape)
  if chips < 4:
    return {1: (1, 1, 1), 2: (1, 2, 1)}[chips]
  shape = [2, 2, 1]
  while shape[0] * shape[1] * shape[2] < chips:
    smallest = min(shape)
    shape[max(i for i, d in enumerate(shape) if d == smallest)] *= 2
  return tuple(sorted(shape, key=lambda d: (d == 1, d)))  # ascending, a 1 last: 2x2x1


def parse(name: str) -> Topology:
  """`v5p-64` (32 chips, 2x4x4), `v5e-256` (16x16), `2xv5p-128` (two 4x4x4 slices), ..."""
  m = re.fullmatch(r"(?:(\d+)x)?(v4|v5p|v5e|v6e)-(\d+)", name.strip().lower())
  if not m:
    raise ValueError(f"unknown TPU topology {name!r}; expected e.g. v4-32, v5e-256, v5p-64, "
                     f"v6e-64 or 2xv5p-128 (known chips: {sorted(CHIPS)})")
  slices, chip, count = int(m.group(1) or 1), m.group(2), int(m.group(3))
  spec = CHIPS[chip]
  if count % spec.cores_per_name_unit:
    raise ValueError(f"{name}: {chip} slices are named by TensorCores, an even number")
  chips = count // spec.cores_per_name_unit
  return Topology(name, chip, slices, chips, _torus_shape(chips, spec.dims))


def compile_only_devices(topology: Topology) -> list:
  """The slice's devices for ahead-of-time compilation (no TPU needed; libtpu must import)."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server on a CPU host
  # Other jax processes on this host may hold libtpu's lock (they probe for a TPU at start-up);
  # compiling needs no exclusive chip access.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - jax always ships it
    raise RuntimeError("jax.experimental.topologies is missing") from e
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology.topology_name,
        chip_config_name="megacore" if topology.spec.cores_per_name_unit == 2 else "default",
        chips_per_host_bounds=topology.chips_per_host, num_slices=topology.num_slices,
        wrap=topology.wrap)
  except RuntimeError as e:
    if "libtpu" in str(e).lower() or "TPU" in str(e):
      raise RuntimeError(f"cannot describe {topology.name}: {e}. Install libtpu with "
                         "`pip install -e .[tpu]`") from e
    raise
  return list(desc.devices)

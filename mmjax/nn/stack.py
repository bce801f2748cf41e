"""Scanned, rematerialised layer stacks.

`nn.scan` keeps compile time flat in depth and gives every layer parameter a leading `layers`
axis; `nn.remat` trades recomputation for activation memory under a named policy.
"""

import contextlib
import contextvars
from typing import Any

import flax.linen as nn
import jax

from mmjax.nn.axes import LAYERS

REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # keep every activation (no remat)
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_all": jax.checkpoint_policies.everything_saveable,
}


_UNROLLED = contextvars.ContextVar("mmjax_unrolled_layers", default=False)


@contextlib.contextmanager
def unrolled_layers():
  """Stacks traced inside unroll their scan into straight-line layers (same parameters).

  For XLA's cost analysis, which counts a while loop's body once whatever its trip count
  (`mmjax.aot` counts the FLOPs of shallow unrolled copies), and for small models trained on the
  CPU (`train.unroll_layers`), where the scan's stacked residual buffers cost more than they save.
  """
  token = _UNROLLED.set(True)
  try:
    yield
  finally:
    _UNROLLED.reset(token)


def scan_layers(
    block: type[nn.Module],
    *,
    length: int,
    remat_policy: str = "none",
    in_axes: tuple[Any, ...] = (),
) -> type[nn.Module]:
  """Returns a module class that applies `block` `length` times.

  `block.__call__(carry, *args) -> (carry, y)`; `in_axes` says, per extra argument, whether it is
  broadcast to every layer (`nn.broadcast`) or sliced along axis 0 (`0`, e.g. a per-layer cache).
  """
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {remat_policy!r}; known: {sorted(REMAT_POLICIES)}")
  if remat_policy != "none":
    block = nn.remat(block, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)
  return nn.scan(
      block,
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=in_axes,
      length=length,
      unroll=True if _UNROLLED.get() else 1,
      metadata_params={nn.PARTITION_NAME: LAYERS},
  )


def first_layers(stack: type[nn.Module], count: int) -> type[nn.Module]:
  """A view of a `scan_layers` class (built with `length=count`) that runs the first `count`
  layers of a longer stack's parameters, which keep all their layers.

  For models that read an earlier layer's output (LLaVA's features from the vision tower's
  second-to-last layer): the layers after it would be computed and, with zero cotangents,
  differentiated for nothing. Apply only: initialisation builds the whole stack.
  """
  def leading(variables):
    return jax.tree.map(lambda leaf: leaf[:count], variables)

  return nn.map_variables(stack, "params", trans_in_fn=leading)

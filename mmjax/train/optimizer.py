"""AdamW with warmup + cosine decay (optax), clipping, and learning-rate multipliers per part."""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.nn.axes import LAYERS


def learning_rate_schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  warmup = int(optim.get("warmup_steps", 0))
  decay_steps = max(total_steps, warmup + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(optim["lr"]), warmup_steps=warmup,
      decay_steps=decay_steps, end_value=float(optim["lr"]) * float(optim.get("end_lr_ratio", 0.0)))


def _dict_path(path) -> tuple[str, ...]:
  # A leaf's place by its dict keys alone: the same for boxed (`nn.Partitioned`) and bare trees.
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _boxed(x) -> bool:
  return isinstance(x, nn.Partitioned)


def _matrices(params: Mapping[str, Any]) -> dict[tuple[str, ...], bool]:
  """Which leaves are matrices, per layer: a stacked layer's `[L, D]` norm scale is a vector.
  `params` carry their logical axes (`nn.Partitioned`, abstract is enough); the `layers` axes of
  scanned stacks (and stacked DeepStack mergers) do not count."""
  def rank(leaf) -> int:
    if isinstance(leaf, nn.Partitioned):
      return leaf.value.ndim - sum(name == LAYERS for name in leaf.names)
    return leaf.ndim

  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=_boxed)
  return {_dict_path(path): rank(leaf) >= 2 for path, leaf in leaves}


def _decay_mask(matrices: dict[tuple[str, ...], bool]):
  """Weight decay on matrices only: norms, biases and 1-D tables are left alone."""
  def mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: matrices[_dict_path(path)], params)
  return mask


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """`optax.clip_by_global_norm`, reusing the norm the train step has already computed (the
  `grad_norm` extra argument of `update`) and scaling by one scalar.

  Ours because optax's recomputes the norm (the step computes it anyway, for its metric and its
  finite check, and the update runs inside a `lax.cond` that CSE does not see into) and divides
  every element by the norm: XLA does not duplicate a division into the two moment updates that
  read the clipped gradient, so it writes the clipped gradients out and reads them back, two
  extra passes over every gradient. Same state (`EmptyState`), so checkpoints are unchanged.
  """
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, grad_norm=None):
    del params
    norm = optax.global_norm(updates) if grad_norm is None else grad_norm
    scale = jnp.minimum(1.0, max_norm / norm)  # 1 when the norm is within the bound (or 0)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(optim: Mapping[str, Any], total_steps: int, trainable: Mapping[str, Any],
                   labels: Mapping[str, Any] | None = None) -> tuple[optax.GradientTransformation,
                                                                     optax.Schedule]:
  """The optimizer over the trainable subtree, and its base learning-rate schedule. Its `update`
  takes the gradients' global norm as `grad_norm=` (computed when not given).

  `trainable` is the trainable parameter subtree, boxed with its logical axes (abstract is
  enough): weight decay goes to the matrices of each layer. `labels` has its structure with the
  name each leaf trains under (`mmjax.train.parts.label_tree`; default: its top-level key).

  `optim.lr_multipliers` maps those names (components such as `encoder`, `connector`, `decoder`,
  or a family's parts) to a factor of the base learning rate, e.g. `{'encoder': 0.1}`.
  """
  schedule = learning_rate_schedule(optim, total_steps)
  multipliers = dict(optim.get("lr_multipliers", {}) or {})
  if labels is None:
    labels = {name: jax.tree.map(lambda _: name, subtree, is_leaf=_boxed)
              for name, subtree in trainable.items()}
  names = sorted(set(jax.tree.leaves(labels)))
  unknown = sorted(set(multipliers) - set(names))
  if unknown:
    raise ValueError(f"optim.lr_multipliers names {unknown}, which are not trainable components "
                     f"({names})")

  decay = _decay_mask(_matrices(trainable))

  def adamw(factor: float) -> optax.GradientTransformation:
    return optax.adamw(
        lambda step: schedule(step) * factor, b1=float(optim.get("b1", 0.9)),
        b2=float(optim.get("b2", 0.999)), eps=float(optim.get("eps", 1e-8)),
        weight_decay=float(optim.get("weight_decay", 0.0)), mask=decay)

  if multipliers:
    transforms = {name: adamw(float(multipliers.get(name, 1.0))) for name in names}
    tx = optax.multi_transform(transforms, labels)
  else:
    tx = adamw(1.0)
  clip = float(optim.get("clip_norm", 0.0) or 0.0)
  if clip > 0:
    tx = optax.chain(clip_by_global_norm(clip), tx)
  return tx, schedule

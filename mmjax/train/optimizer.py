"""AdamW with warmup + cosine decay (optax), clipping, and learning-rate multipliers per part."""

from typing import Any, Mapping

import jax
import optax


def learning_rate_schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  warmup = int(optim.get("warmup_steps", 0))
  decay_steps = max(total_steps, warmup + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(optim["lr"]), warmup_steps=warmup,
      decay_steps=decay_steps, end_value=float(optim["lr"]) * float(optim.get("end_lr_ratio", 0.0)))


def _decay_mask(params):
  # Weight decay on matrices only: norms, biases and 1-D tables are left alone.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim: Mapping[str, Any], total_steps: int,
                   trainable: Mapping[str, Any]) -> tuple[optax.GradientTransformation,
                                                           optax.Schedule]:
  """The optimizer over the trainable subtree, and its base learning-rate schedule.

  `optim.lr_multipliers` maps top-level components (`encoder`, `connector`, `decoder`) to a
  factor of the base learning rate, e.g. `{'encoder': 0.1}`.
  """
  schedule = learning_rate_schedule(optim, total_steps)
  multipliers = dict(optim.get("lr_multipliers", {}) or {})
  unknown = sorted(set(multipliers) - set(trainable))
  if unknown:
    raise ValueError(f"optim.lr_multipliers names {unknown}, which are not trainable components "
                     f"({sorted(trainable)})")

  def adamw(factor: float) -> optax.GradientTransformation:
    return optax.adamw(
        lambda step: schedule(step) * factor, b1=float(optim.get("b1", 0.9)),
        b2=float(optim.get("b2", 0.999)), eps=float(optim.get("eps", 1e-8)),
        weight_decay=float(optim.get("weight_decay", 0.0)), mask=_decay_mask)

  if multipliers:
    labels = {name: name for name in trainable}
    transforms = {name: adamw(float(multipliers.get(name, 1.0))) for name in trainable}
    tx = optax.multi_transform(transforms, lambda params: {k: labels[k] for k in params})
  else:
    tx = adamw(1.0)
  clip = float(optim.get("clip_norm", 0.0) or 0.0)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedule

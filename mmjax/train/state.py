"""The train state: trainable parameters with their optimizer state, frozen parameters apart.

Frozen components get no optimizer state and no gradients (the loss is differentiated with
respect to the trainable subtree only), so they stay bit-identical and cost no memory beyond
their weights.
"""

from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied
  params: dict  # trainable components {name: subtree}
  frozen: dict  # frozen components {name: subtree}
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array  # int32 scalar: steps skipped for a non-finite loss or gradient

  def all_params(self) -> dict:
    return merge(self.params, self.frozen)


def split(params: dict, trainable: Sequence[str]) -> tuple[dict, dict]:
  """Top-level components named in `trainable` vs the rest; unknown names are an error."""
  unknown = sorted(set(trainable) - set(params))
  if unknown:
    raise ValueError(f"train.trainable names {unknown}; the model's components are "
                     f"{sorted(params)}")
  train = {k: v for k, v in params.items() if k in trainable}
  frozen = {k: v for k, v in params.items() if k not in trainable}
  return train, frozen


def merge(params: dict, frozen: dict) -> dict:
  return {**frozen, **params}


def init_state(module: nn.Module, example_inputs: tuple, tx, trainable: Sequence[str],
               rng: jax.Array) -> TrainState:
  """A fresh state; parameters stay boxed with their logical axes (unbox before use)."""
  params_rng, state_rng = jax.random.split(rng)
  params = module.init(params_rng, *example_inputs)["params"]
  train, frozen = split(params, trainable)
  return TrainState(step=jnp.zeros((), jnp.int32), params=train, frozen=frozen,
                    opt_state=tx.init(train), rng=state_rng, skipped=jnp.zeros((), jnp.int32))

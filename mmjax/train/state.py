"""The train state: trainable parameters with their optimizer state, frozen parameters apart.

Frozen components get no optimizer state and no gradients (the loss is differentiated with
respect to the trainable subtree only), so they stay bit-identical and cost no memory beyond
their weights.
"""

import dataclasses
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import lora as lora_lib
from mmjax.train.parts import merge, split


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied
  params: dict  # trainable parameters (nested dict: `mmjax.train.parts`)
  frozen: dict  # frozen parameters, the same structure without the trainable leaves
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array  # int32 scalar: steps skipped for a non-finite loss or gradient

  def all_params(self) -> dict:
    return merge(self.params, self.frozen)


def init_state(module: nn.Module, example_inputs: tuple, tx, trainable: Sequence[str],
               rng: jax.Array, parts: Mapping[str, str] = {},
               lora: lora_lib.LoraConfig | None = None) -> TrainState:
  """A fresh state; parameters stay boxed with their logical axes (unbox before use).
  `trainable` names components or `parts` (see `mmjax.train.parts`); `lora` adds its factors
  (`mmjax.train.adapters.trainable_parts` names them)."""
  params_rng, state_rng = jax.random.split(rng)
  with lora_lib.applied(lora):
    params = module.init(params_rng, *example_inputs)["params"]
  train, frozen = split(params, trainable, parts)
  return TrainState(step=jnp.zeros((), jnp.int32), params=train, frozen=frozen,
                    opt_state=tx.init(train), rng=state_rng, skipped=jnp.zeros((), jnp.int32))


@flax.struct.dataclass
class PreferenceState(TrainState):
  """The train state of a preference objective (`mmjax.train.preference`)."""

  # The reference model's own parameters: the initial values of what trains fully (LoRA
  # factors aside: the reference is the model without them), frozen; `frozen` holds the rest.
  # Empty when the reference log-probabilities come with the data.
  reference: dict
  reward_mean: jax.Array  # float32 scalar: BCO's reward shift, the running mean of rewards
  reward_batches: jax.Array  # float32 scalar: the batches in that mean


def with_reference(state: TrainState, keep_copy: bool) -> PreferenceState:
  """`state` as a `PreferenceState`: with a frozen copy of its trained parameters (no LoRA
  factors) as the reference model's when `keep_copy`."""
  reference = lora_lib.without_factors(state.params) if keep_copy else {}
  return PreferenceState(
      **{f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)},
      reference=jax.tree.map(jnp.copy, reference), reward_mean=jnp.zeros((), jnp.float32),
      reward_batches=jnp.zeros((), jnp.float32))

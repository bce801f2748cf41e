"""The train step: masked next-token cross-entropy, gradient accumulation, guarded update."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.decoders.llama import HeadLoss
from mmjax.models.registry import family_of_module
from mmjax.nn import lora as lora_lib
from mmjax.train.loss import check_weighting, cross_entropy, loss_weights, target_cross_entropy
from mmjax.train.state import TrainState, merge


def uses_drop_path(module: nn.Module) -> bool:
  """Whether the module trains with stochastic layers (InternViT's drop path), which take
  `train=True` and a 'dropout' rng."""
  return bool(family_of_module(module).stochastic_kwargs(module, jax.random.PRNGKey(0)))


def forward(module: nn.Module, params: dict, batch: dict, rng: jax.Array | None = None,
            head_loss: HeadLoss | None = None, lora: lora_lib.LoraConfig | None = None) -> Any:
  """Logits `[B, T, V]` for a training batch (schema: `mmjax.data.pipeline`), or the result of
  `head_loss` (`Decoder`): the module's family maps the batch to its arguments
  (`Family.train_forward`). `rng` drives stochastic layers where the model has them; `lora`
  applies the factors `params` hold (partial LoRA at the family's image positions)."""
  family = family_of_module(module)
  positions = None
  if lora is not None and lora.positions == "image":
    positions = family.image_token_mask(module.config, batch)
  with lora_lib.applied(lora, positions):
    return family.train_forward(module, params, batch, rng, head_loss)


def microbatches(batch: dict, steps: int) -> dict:
  """`[A*b, ...] -> [A, b, ...]`, taking every A-th row so each microbatch spans all shards."""
  def split(x):
    return x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(module: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum: int = 1, z_loss: float = 0.0,
                    loss_chunk: int = 0, loss_weighting: str = "token",
                    lora: lora_lib.LoraConfig | None = None,
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns `step(state, batch) -> (state, metrics)` (jit it with shardings and donation).

  `loss_chunk > 0` computes logits only for target positions, that many per row at a time
  (`mmjax.train.loss.target_cross_entropy`), and runs the decoder's last layer only there
  (`Decoder(head_loss=...)`); 0 computes every position's logits. `loss_weighting` weighs each
  sample's tokens (`mmjax.train.loss.loss_weights`: `token`, `sample` or `square`). `lora`:
  the parameters hold its factors (`mmjax.nn.lora`).
  """
  if loss_chunk < 0:
    raise ValueError(f"train.loss_chunk must be >= 0 (0: dense logits), got {loss_chunk}")
  check_weighting(loss_weighting)  # here, not when the step is traced

  def mean_loss(params, frozen, batch, rng, denom):
    """The weighted loss summed over the batch's targets and divided by `denom`, the global
    batch's summed weights (inside the differentiated function, so no pass of its own scales
    the gradients), and the batch's target count."""
    params = merge(params, frozen)
    weights = batch["loss_weights"]
    count = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    if loss_chunk:
      def head_loss(logits_fn, head, hidden):
        return target_cross_entropy(head, hidden, logits_fn, batch["labels"], weights,
                                    loss_chunk, z_loss, scale=1 / denom)[0]
      return forward(module, params, batch, rng, head_loss, lora), count
    logits = forward(module, params, batch, rng, lora=lora)
    total, _ = cross_entropy(logits, batch["labels"], weights, z_loss)
    return total / denom, count

  grad_fn = jax.value_and_grad(mean_loss, has_aux=True)

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    # Per-token weights from the whole rows (before any microbatch split), and the weighted
    # mean over the global batch: every microbatch divides by the same sum.
    weights = loss_weights(batch["loss_mask"], batch.get("segment_ids"), loss_weighting)
    batch = {**batch, "loss_weights": weights}
    # (At least 1 whenever there is a target: each sample's weights sum to n^(1-p) >= 1.)
    denom = jnp.maximum(jnp.sum(weights), 1.0)
    if grad_accum == 1:
      (loss, count), grads = grad_fn(state.params, state.frozen, batch, state.rng, denom)
    else:
      def body(carry, micro):
        index, micro = micro
        rng = jax.random.fold_in(state.rng, index)
        (loss, n), g = grad_fn(state.params, state.frozen, micro, rng, denom)
        acc_loss, acc_n, acc_g = carry
        return (acc_loss + loss, acc_n + n, jax.tree.map(jnp.add, acc_g, g)), None
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (loss, count, grads), _ = jax.lax.scan(
          body, (jnp.zeros(()), jnp.zeros(()), zeros),
          (jnp.arange(grad_accum), microbatches(batch, grad_accum)))
    new_state, grad_norm = guarded_update(tx, state, loss, grads)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "target_tokens": count, "skipped": new_state.skipped}
    return new_state, metrics

  return step


def guarded_update(tx: optax.GradientTransformation, state: TrainState, loss: jax.Array,
                   grads: dict, **changes) -> tuple[TrainState, jax.Array]:
  """The state after one optimizer update with `grads` (and `changes` to other fields), or,
  when the loss or the gradient is not finite, without it (counted as skipped); and the
  gradient norm."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  def update(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params, grad_norm=grad_norm)
    return optax.apply_updates(params, updates), opt_state

  # A non-finite loss or gradient skips the update: nothing of it reaches the state. (A cond,
  # not a select of new or old: that would read and write every parameter and moment again.)
  params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params,
                                   state.opt_state)
  kept = {k: jnp.where(finite, v, getattr(state, k)) for k, v in changes.items()}
  return state.replace(
      step=state.step + finite.astype(jnp.int32),
      params=params,
      opt_state=opt_state,
      rng=jax.random.fold_in(state.rng, state.step),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      **kept,
  ), grad_norm

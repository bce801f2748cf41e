"""The train step of a contrastive objective (`mmjax.train.contrastive`) on image-caption batches.

A batch holds `pixels [B, H, W, C]`, `text_ids [B, L]` and `text_mask [B, L]` (row i's caption
describes row i's image). The family's `contrastive_forward` gives both towers' normalised
embeddings and the learned temperature (and bias); the captions' embeddings are gathered from
every batch shard so each image meets the whole global batch's captions as negatives, while the
logits' rows stay with their images' shards.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.models.registry import family_of_module
from mmjax.train import blip2_losses
from mmjax.train import contrastive as con
from mmjax.train.parts import merge
from mmjax.train.state import TrainState
from mmjax.train.step import guarded_update


def batch_logits(module: nn.Module, params: dict, batch: dict, capped: bool,
                 rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """`[B, B]` logits of every image of the global batch against every caption, and the
  temperature and bias they were scaled with (scalars, for the metrics)."""
  out = family_of_module(module).contrastive_forward(module, params, batch, rng)
  images = nn.with_logical_constraint(out.image_embeds, ("activation_batch", None))  # [B, D]
  texts = nn.with_logical_constraint(out.text_embeds, (None, None))  # [B, D], all shards' rows
  scale, bias = jnp.reshape(out.logit_scale, ()), jnp.reshape(out.logit_bias, ())
  logits = con.pair_logits(images, texts, scale, bias, capped)
  used = jnp.minimum(scale, con.MAX_LOGIT_SCALE) if capped else scale
  return (nn.with_logical_constraint(logits, ("activation_batch", None)),
          {"temperature": jnp.exp(-used), "logit_bias": bias})


def make_contrastive_step(module: nn.Module, tx: optax.GradientTransformation,
                          schedule: optax.Schedule, config: con.ContrastiveConfig, *,
                          grad_accum: int = 1,
                          ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns `step(state, batch) -> (state, metrics)` (jit it as the LM step)."""
  if grad_accum != 1:
    # Microbatches would each see only their own captions as negatives: a different loss.
    raise ValueError(f"train.objective={config.objective!r} takes its negatives from the whole "
                     f"batch, which microbatches would split: set train.grad_accum=1 (got "
                     f"{grad_accum}) and size data.batch_size to the memory")
  if config.objective == "blip2_stage1":
    return _stage1_step(module, tx, schedule)
  loss_of = con.LOSSES[config.objective]
  capped = config.objective == "clip"

  def loss_fn(params, frozen, batch, rng):
    logits, scalars = batch_logits(module, merge(params, frozen), batch, capped, rng)
    return loss_of(logits), (logits, scalars)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    (loss, (logits, scalars)), grads = grad_fn(state.params, state.frozen, batch, state.rng)
    new_state, grad_norm = guarded_update(tx, state, loss, grads)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "skipped": new_state.skipped, **con.retrieval_accuracy(logits), **scalars}
    if capped:  # CLIP has no bias
      del metrics["logit_bias"]
    return new_state, metrics

  return step


def _stage1_step(module: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule):
  """BLIP-2 stage 1: the negatives are sampled and dropout drawn from the state's rng, folded
  with the step (a fresh draw every step, the same on a resumed run)."""

  def loss_fn(params, frozen, batch, rng):
    return blip2_losses.stage1_loss(module, merge(params, frozen), batch, rng)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = grad_fn(state.params, state.frozen, batch, rng)
    new_state, grad_norm = guarded_update(tx, state, loss, grads)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
                       "skipped": new_state.skipped, **metrics}

  return step

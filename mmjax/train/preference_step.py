"""The train step of a preference objective (`mmjax.train.preference`) on pair batches.

A pair batch (`mmjax.data.pairs`) holds each pair row's chosen and rejected answers along an
answer axis of its text arrays (`input_ids [B, 2, T]`, ...) and the row's images once. The
policy runs under `jax.vmap` over that axis with the images unbatched: the vision tower (and
everything else computed from the images alone, e.g. cross-attention keys and values) runs once
per pair row, and both answers read its features; the decoder runs on both answers. That holds
for every family, through its own `Family.train_forward`.

The reference model is the frozen initial policy: the state's `reference` (initial copies of
what trains fully) over `frozen`, without LoRA factors, run without gradients in the same step,
or the batch's precomputed `ref_chosen_logps` / `ref_rejected_logps` (`train.dpo.reference`).
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.data.pairs import ANSWER_KEYS, REFERENCE_KEYS
from mmjax.nn import lora as lora_lib
from mmjax.train import preference as pref
from mmjax.train.logprobs import target_logprobs, token_logprobs
from mmjax.train.loss import check_weighting, loss_weights
from mmjax.train.parts import merge
from mmjax.train.state import PreferenceState
from mmjax.train.step import forward, guarded_update, microbatches

# Per-batch sums the loss function returns beside the loss (the step turns them into metrics).
SUMS = ("preference", "quality", "generation", "chosen", "rejected", "margin", "correct",
        "logps_chosen", "logps_rejected")
LOSS_KEYS = ("pair_valid", "generation_weights", *REFERENCE_KEYS)


def answer_logprobs(module: nn.Module, params: dict, batch: dict, rng: jax.Array | None,
                    lora: lora_lib.LoraConfig | None, loss_chunk: int) -> jax.Array:
  """Each answer's per-token target log-probabilities, `[B, 2, T]` float32 (0 off targets):
  the model under `vmap` over the answer axis, the images shared (see the module docstring)."""
  answers = {k: v for k, v in batch.items() if k in ANSWER_KEYS}
  shared = {k: v for k, v in batch.items() if k not in ANSWER_KEYS and k not in LOSS_KEYS}

  def one_answer(text):  # [B, T] arrays of one answer
    rows = {**shared, **text}
    labels, mask = rows["labels"], rows["loss_mask"]
    if loss_chunk:
      def head_loss(logits_fn, head, hidden):
        return target_logprobs(head, hidden, logits_fn, labels, mask, loss_chunk)
      return forward(module, params, rows, rng, head_loss, lora)
    return token_logprobs(forward(module, params, rows, rng, lora=lora), labels, mask)

  return jax.vmap(one_answer, in_axes=1, out_axes=1)(answers)


def pair_validity(batch: dict) -> jax.Array:
  """`[B, K]`: pair slots whose chosen and rejected answers both have targets."""
  counts = pref.pair_sums((batch["loss_mask"] > 0).astype(jnp.float32), batch["segment_ids"])
  return (counts[:, 0] > 0) & (counts[:, 1] > 0)


def make_preference_step(module: nn.Module, tx: optax.GradientTransformation,
                         schedule: optax.Schedule, config: pref.PreferenceConfig, *,
                         grad_accum: int = 1, loss_chunk: int = 0,
                         loss_weighting: str = "token",
                         lora: lora_lib.LoraConfig | None = None,
                         ) -> Callable[[PreferenceState, dict], tuple[PreferenceState, dict]]:
  """Returns `step(state, batch) -> (state, metrics)` for pair batches (jit it as the LM step).

  `loss_chunk`, `loss_weighting` (the generation loss's) and `lora` as `make_train_step`'s.
  """
  if loss_chunk < 0:
    raise ValueError(f"train.loss_chunk must be >= 0 (0: dense logits), got {loss_chunk}")
  check_weighting(loss_weighting)
  weights = config.weights

  def reference_logps(state: PreferenceState, batch: dict) -> jax.Array:
    """`[B, 2, K]` summed answer log-probabilities of the reference model."""
    if not config.needs_reference_model:
      return jnp.stack([batch[k] for k in REFERENCE_KEYS], axis=1).astype(jnp.float32)
    params = merge(state.reference, state.frozen)
    tokens = answer_logprobs(module, params, batch, None, None, loss_chunk)
    return jax.lax.stop_gradient(pref.pair_sums(tokens, batch["segment_ids"]))

  def loss_fn(params, frozen, batch, rng, ref, running, denoms):
    """The batch's share of the global loss, its metric sums and the running reward mean."""
    tokens = answer_logprobs(module, merge(params, frozen), batch, rng, lora, loss_chunk)
    logps = pref.pair_sums(tokens, batch["segment_ids"])  # [B, 2, K]
    valid = batch["pair_valid"]
    rewards = config.beta * (logps - ref)
    mean, batches = pref.updated_mean(*running, rewards[:, 0], rewards[:, 1], valid)
    per = pref.pair_losses(config, logps, ref, valid, mean)
    sums = {k: jnp.sum(per[k]) for k in ("preference", "quality", "chosen", "rejected",
                                          "margin", "correct")}
    sums["generation"] = -jnp.sum(tokens[:, 0] * batch["generation_weights"])
    for i, name in enumerate(("logps_chosen", "logps_rejected")):
      sums[name] = jnp.sum(jnp.where(valid, logps[:, i], 0.0))
    loss = (weights["preference"] * sums["preference"] + weights["quality"] * sums["quality"]
            ) / denoms["pairs"]
    if weights["generation"]:
      loss = loss + weights["generation"] * sums["generation"] / denoms["generation"]
    return loss, (sums, (mean, batches))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro_step(state, batch, rng, running, denoms):
    ref = reference_logps(state, batch)
    (loss, (sums, running)), grads = grad_fn(state.params, state.frozen, batch, rng, ref,
                                             running, denoms)
    return loss, sums, running, grads

  def step(state: PreferenceState, batch: dict) -> tuple[PreferenceState, dict]:
    # Pair validity and the generation loss's token weights from the whole rows, and the
    # global batch's denominators: every microbatch divides by the same ones.
    chosen_weights = loss_weights(batch["loss_mask"][:, 0], batch["segment_ids"][:, 0],
                                  loss_weighting)
    batch = {**batch, "pair_valid": pair_validity(batch), "generation_weights": chosen_weights}
    pairs = jnp.sum(batch["pair_valid"].astype(jnp.float32))
    denoms = {"pairs": jnp.maximum(pairs, 1.0),
              "generation": jnp.maximum(jnp.sum(chosen_weights), 1.0)}
    running = (state.reward_mean, state.reward_batches)
    if grad_accum == 1:
      loss, sums, running, grads = micro_step(state, batch, state.rng, running, denoms)
    else:
      def body(carry, micro):
        index, micro = micro
        acc_loss, acc_sums, running, acc_grads = carry
        loss, sums, running, grads = micro_step(
            state, micro, jax.random.fold_in(state.rng, index), running, denoms)
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (acc_loss + loss, add(acc_sums, sums), running, add(acc_grads, grads)), None
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      init = (jnp.zeros(()), {k: jnp.zeros(()) for k in SUMS}, running, zeros)
      (loss, sums, running, grads), _ = jax.lax.scan(
          body, init, (jnp.arange(grad_accum), microbatches(batch, grad_accum)))
    new_state, grad_norm = guarded_update(tx, state, loss, grads, reward_mean=running[0],
                                          reward_batches=running[1])
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "target_tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32)),
               "skipped": new_state.skipped, "pairs": pairs,
               **pair_metrics(sums, denoms, config)}
    if config.objective == "mpo":
      metrics["rewards/shift"] = running[0]
    return new_state, metrics

  return step


def pair_metrics(sums: dict, denoms: dict, config: pref.PreferenceConfig) -> dict:
  """Mean rewards, margin and accuracy over the batch's pairs (and MPO's loss terms)."""
  out = {f"rewards/{k}": sums[k] / denoms["pairs"] for k in ("chosen", "rejected", "margin")}
  out["rewards/accuracy"] = sums["correct"] / denoms["pairs"]
  out["logps/chosen"] = sums["logps_chosen"] / denoms["pairs"]
  out["logps/rejected"] = sums["logps_rejected"] / denoms["pairs"]
  if config.objective == "mpo":
    out["loss/preference"] = sums["preference"] / denoms["pairs"]
    out["loss/quality"] = sums["quality"] / denoms["pairs"]
    out["loss/generation"] = sums["generation"] / denoms["generation"]
  return out

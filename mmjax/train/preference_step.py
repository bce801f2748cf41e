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
        "logps_chosen", "logps_rejected", "likelier")
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


def reference_logps(module: nn.Module, config: pref.PreferenceConfig, state: PreferenceState,
                    batch: dict, loss_chunk: int = 0) -> jax.Array:
  """`[B, 2, K]` summed answer log-probabilities of the reference model: the state's frozen
  initial model (without LoRA), or the batch's precomputed columns."""
  if not config.needs_reference_model:
    return jnp.stack([batch[k] for k in REFERENCE_KEYS], axis=1).astype(jnp.float32)
  params = merge(state.reference, state.frozen)
  tokens = answer_logprobs(module, params, batch, None, None, loss_chunk)
  return jax.lax.stop_gradient(pref.pair_sums(tokens, batch["segment_ids"]))


def pair_validity(batch: dict) -> jax.Array:
  """`[B, K]`: pair slots whose chosen and rejected answers both have targets."""
  counts = pref.pair_sums((batch["loss_mask"] > 0).astype(jnp.float32), batch["segment_ids"])
  return (counts[:, 0] > 0) & (counts[:, 1] > 0)


def with_loss_inputs(batch: dict, loss_weighting: str = "token") -> tuple[dict, dict]:
  """The batch with each pair slot's validity and the generation loss's token weights (of the
  chosen rows, `mmjax.train.loss.loss_weights`), and the batch's denominators: of the global
  batch, before any microbatch split, so every microbatch divides by the same ones."""
  chosen_weights = loss_weights(batch["loss_mask"][:, 0], batch["segment_ids"][:, 0],
                                loss_weighting)
  batch = {**batch, "pair_valid": pair_validity(batch), "generation_weights": chosen_weights}
  pairs = jnp.sum(batch["pair_valid"].astype(jnp.float32))
  return batch, {"pairs": pairs, "generation": jnp.maximum(jnp.sum(chosen_weights), 1.0)}


def preference_loss(module: nn.Module, config: pref.PreferenceConfig, params: dict, batch: dict,
                    ref: jax.Array, running: tuple, denoms: dict, *, rng=None,
                    lora: lora_lib.LoraConfig | None = None, loss_chunk: int = 0):
  """`(loss, (sums, running))`: the batch's share of the global loss, its metric sums (`SUMS`)
  and the running reward mean `(mean, batches)` after it.

  `batch` and `denoms` from `with_loss_inputs`; `ref [B, 2, K]` the reference log-probabilities.
  """
  weights = config.weights
  tokens = answer_logprobs(module, params, batch, rng, lora, loss_chunk)
  logps = pref.pair_sums(tokens, batch["segment_ids"])  # [B, 2, K]
  valid = batch["pair_valid"]
  rewards = config.beta * (logps - ref)
  mean, batches = pref.updated_mean(*running, rewards[:, 0], rewards[:, 1], valid)
  per = pref.pair_losses(config, logps, ref, valid, mean)
  sums = {k: jnp.sum(per[k]) for k in ("preference", "quality", "chosen", "rejected", "margin",
                                        "correct")}
  sums["generation"] = -jnp.sum(tokens[:, 0] * batch["generation_weights"])
  for i, name in enumerate(("logps_chosen", "logps_rejected")):
    sums[name] = jnp.sum(jnp.where(valid, logps[:, i], 0.0))
  sums["likelier"] = jnp.sum((valid & (logps[:, 0] > logps[:, 1])).astype(jnp.float32))
  pairs = jnp.maximum(denoms["pairs"], 1.0)
  loss = (weights["preference"] * sums["preference"] + weights["quality"] * sums["quality"]
          ) / pairs
  if weights["generation"]:
    loss = loss + weights["generation"] * sums["generation"] / denoms["generation"]
  return loss, (sums, (mean, batches))


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

  def loss_fn(params, frozen, batch, rng, ref, running, denoms):
    return preference_loss(module, config, merge(params, frozen), batch, ref, running, denoms,
                           rng=rng, lora=lora, loss_chunk=loss_chunk)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro_step(state, batch, rng, running, denoms):
    ref = reference_logps(module, config, state, batch, loss_chunk)
    (loss, (sums, running)), grads = grad_fn(state.params, state.frozen, batch, rng, ref,
                                             running, denoms)
    return loss, sums, running, grads

  def step(state: PreferenceState, batch: dict) -> tuple[PreferenceState, dict]:
    batch, denoms = with_loss_inputs(batch, loss_weighting)
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
               "skipped": new_state.skipped, **pair_metrics(sums, denoms, config)}
    if config.objective == "mpo":
      metrics["rewards/shift"] = running[0]
    return new_state, metrics

  return step


def pair_metrics(sums: dict, denoms: dict, config: pref.PreferenceConfig) -> dict:
  """Mean rewards, margin and accuracy over the batch's pairs (and MPO's loss terms)."""
  pairs = jnp.maximum(denoms["pairs"], 1.0)
  out = {"pairs": denoms["pairs"]}
  out.update({f"rewards/{k}": sums[k] / pairs for k in ("chosen", "rejected", "margin")})
  out["rewards/accuracy"] = sums["correct"] / pairs
  out["logps/chosen"] = sums["logps_chosen"] / pairs
  out["logps/rejected"] = sums["logps_rejected"] / pairs
  if config.objective == "mpo":
    out["loss/preference"] = sums["preference"] / pairs
    out["loss/quality"] = sums["quality"] / pairs
    out["loss/generation"] = sums["generation"] / denoms["generation"]
  return out


def make_preference_eval(module: nn.Module, config: pref.PreferenceConfig, *, loss_chunk: int = 0,
                         lora: lora_lib.LoraConfig | None = None
                         ) -> Callable[[PreferenceState, dict], dict]:
  """`evaluate(state, batch) -> metrics`: the step's metrics of a batch's pairs without a
  gradient or stochastic layers, and `policy_accuracy`, the fraction of pairs whose chosen
  answer the policy alone finds likelier (no reference)."""

  def evaluate(state: PreferenceState, batch: dict) -> dict:
    batch, denoms = with_loss_inputs(batch)
    ref = reference_logps(module, config, state, batch, loss_chunk)
    loss, (sums, _) = preference_loss(
        module, config, state.all_params(), batch, ref, (state.reward_mean, state.reward_batches),
        denoms, lora=lora, loss_chunk=loss_chunk)
    return {"loss": loss, **pair_metrics(sums, denoms, config),
            "policy_accuracy": sums["likelier"] / jnp.maximum(denoms["pairs"], 1.0)}

  return evaluate

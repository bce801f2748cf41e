"""Preference objectives on answer pairs: sigmoid DPO and InternVL's MPO.

Every pair `i` has a chosen and a rejected answer to the same prompt and image; `logp` is the
summed log-probability of an answer's tokens under the trained policy, `ref` under the reference
model (the frozen initial policy), and an answer's reward is `beta * (logp - ref)`:

  dpo      -(1 - eps) log sigmoid(m) - eps log sigmoid(-m),  m = r_chosen - r_rejected
           (DPO's sigmoid loss with label smoothing `eps`, as TRL's `sigmoid` loss type)
  quality  -log sigmoid(r_chosen - delta) - log sigmoid(-(r_rejected - delta))
           (BCO's pairwise loss, TRL's `bco_pair`: `delta`, the reward shift, is the running
           mean of the batches' mean reward, this batch's included)
  mpo      w_pref * dpo + w_quality * quality + w_gen * generation
           (InternVL's Mixed Preference Optimization; `generation` is the LM loss of the chosen
           answers, mean over their tokens as `train.loss_weighting` weighs them)

Pair losses are averaged over the pairs of the global batch. InternVL3's MPO recipe trains with
TRL's `loss_type=sigmoid,bco_pair`, weights 0.8 / 0.2 and `rpo_alpha=1`: the defaults here.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmjax.train.contrastive import OBJECTIVES as CONTRASTIVE

OBJECTIVES = ("lm", "dpo", "mpo")
REFERENCES = ("model", "precomputed")


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  """`train.objective` (not `lm`) with `train.dpo.*` and, for `mpo`, `train.mpo.*`."""

  objective: str = "dpo"
  beta: float = 0.1  # the reward scale: DPO's KL penalty strength
  label_smoothing: float = 0.0  # DPO's eps: the assumed fraction of flipped preferences
  # 'model': the frozen initial policy, run in the step; 'precomputed': the batch's
  # `ref_chosen_logps` / `ref_rejected_logps` (from the pairs' records).
  reference: str = "model"
  preference_weight: float = 0.8
  quality_weight: float = 0.2
  generation_weight: float = 1.0

  def __post_init__(self):
    if self.objective not in OBJECTIVES[1:]:
      raise ValueError(f"train.objective must be one of {OBJECTIVES}, got {self.objective!r}")
    if self.reference not in REFERENCES:
      raise ValueError(f"train.dpo.reference must be one of {REFERENCES}, got "
                       f"{self.reference!r}")
    if not self.beta > 0:
      raise ValueError(f"train.dpo.beta must be > 0, got {self.beta}")
    if not 0 <= self.label_smoothing < 0.5:
      raise ValueError(f"train.dpo.label_smoothing must be in [0, 0.5), got "
                       f"{self.label_smoothing}")

  @property
  def weights(self) -> dict[str, float]:
    """Each pair loss's weight, and the generation loss's (0 for DPO)."""
    if self.objective == "dpo":
      return {"preference": 1.0, "quality": 0.0, "generation": 0.0}
    return {"preference": self.preference_weight, "quality": self.quality_weight,
            "generation": self.generation_weight}

  @classmethod
  def from_train(cls, train: Mapping[str, Any]) -> "PreferenceConfig | None":
    """From a config's `train` section; None for the `lm` objective."""
    objective = str(train.get("objective", "lm"))
    if objective == "lm" or objective in CONTRASTIVE:
      return None
    if objective not in OBJECTIVES:
      raise ValueError(f"train.objective must be one of {(*OBJECTIVES, *CONTRASTIVE)}, got "
                       f"{objective!r}")
    dpo = dict(train.get("dpo", {}) or {})
    mpo = dict(train.get("mpo", {}) or {})
    unknown = set(dpo) - {"beta", "label_smoothing", "reference"}
    unknown |= {f"mpo.{k}" for k in set(mpo) - {"preference_weight", "quality_weight",
                                                   "generation_weight"}}
    if unknown:
      raise ValueError(f"unknown train.dpo / train.mpo keys {sorted(unknown)}")
    return cls(objective=objective, **{k: v for k, v in {**dpo, **mpo}.items()})

  @property
  def needs_reference_model(self) -> bool:
    return self.reference == "model"


def pair_sums(token_values: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Per-pair sums of per-token values: `[B, 2, T]` (chosen, rejected rows of each pair row)
  -> `[B, 2, T]`, slot `k` holding the pair of segment `k + 1` (packed rows hold several pairs,
  segment `k` in the chosen row and in the rejected row being the same pair)."""
  t = token_values.shape[-1]

  def row(values, segments):  # [T], [T] -> [T]
    return jax.ops.segment_sum(values, segments, num_segments=t + 1)[1:]

  return jax.vmap(jax.vmap(row))(token_values, segment_ids.astype(jnp.int32))


def pair_losses(cfg: PreferenceConfig, logps: jax.Array, ref: jax.Array, valid: jax.Array,
                delta: jax.Array) -> dict[str, jax.Array]:
  """Per-pair losses and rewards, `[B, K]` each (0 where not `valid`).

  `logps`, `ref [B, 2, K]` summed answer log-probabilities (chosen, rejected); `valid [B, K]`;
  `delta` BCO's reward shift (a scalar, not differentiated).
  """
  rewards = cfg.beta * (logps - jax.lax.stop_gradient(ref))  # [B, 2, K]
  chosen, rejected = rewards[:, 0], rewards[:, 1]
  margin = chosen - rejected
  eps = cfg.label_smoothing
  dpo = -(1 - eps) * jax.nn.log_sigmoid(margin) - eps * jax.nn.log_sigmoid(-margin)
  delta = jax.lax.stop_gradient(delta)
  quality = -jax.nn.log_sigmoid(chosen - delta) - jax.nn.log_sigmoid(-(rejected - delta))
  keep = lambda x: jnp.where(valid, x, 0.0)
  return {"preference": keep(dpo), "quality": keep(quality), "chosen": keep(chosen),
          "rejected": keep(rejected), "margin": keep(margin),
          "correct": keep((chosen > rejected).astype(jnp.float32))}


def updated_mean(mean: jax.Array, count: jax.Array, chosen: jax.Array, rejected: jax.Array,
                 valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The running mean of rewards after this batch's (TRL's `RunningMoments` fed one value per
  batch: the mean of its chosen and rejected rewards), and the number of batches in it. A batch
  without a pair leaves both as they are."""
  pairs = jnp.sum(valid.astype(jnp.float32))
  batch_mean = jax.lax.stop_gradient(jnp.sum(chosen + rejected) / jnp.maximum(2 * pairs, 1.0))
  new_count = count + (pairs > 0).astype(count.dtype)
  new_mean = jnp.where(pairs > 0, mean + (batch_mean - mean) / jnp.maximum(new_count, 1.0), mean)
  return new_mean, new_count

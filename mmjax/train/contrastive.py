"""Contrastive image-text objectives: CLIP's softmax loss and SigLIP's sigmoid loss.

A batch holds `B` images and their `B` captions; `logits [B, B]` compares every image (rows)
with every caption (columns) through the model's L2-normalised embeddings, scaled by the learned
temperature `exp(t)` (and shifted by SigLIP's learned bias `b`):

  clip    the mean of two cross-entropies, image -> caption over each row and caption -> image
          over each column, the matching pair being the diagonal (CLIP; open_clip's `ClipLoss`).
          `exp(t)` is capped at 100 as CLIP and open_clip cap it.
  siglip  every (image, caption) cell is a binary decision, +1 on the diagonal and -1 elsewhere:
          -sum(log sigmoid(z * logits)) over the captions, mean over the images (SigLIP,
          big_vision's `sigmoid` loss).

Negatives come from the whole global batch: the step gathers the captions' embeddings from
every data-parallel shard (all-gather) and keeps the logits' rows, the images, on their shards.
"""

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

# blip2_stage1: BLIP-2's ITC + ITM + ITG (`mmjax.train.blip2_losses`) on the same pairs.
OBJECTIVES = ("clip", "siglip", "blip2_stage1")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on the temperature's inverse


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
  """`train.objective` `clip`, `siglip` or `blip2_stage1`."""

  objective: str

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"a contrastive objective is one of {OBJECTIVES}, got {self.objective!r}")

  @classmethod
  def from_train(cls, train: Mapping[str, Any]) -> "ContrastiveConfig | None":
    """From a config's `train` section; None for objectives that are not contrastive."""
    objective = str(train.get("objective", "lm"))
    return cls(objective) if objective in OBJECTIVES else None


def pair_logits(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array,
                logit_bias: jax.Array, capped: bool) -> jax.Array:
  """`[B, N]` float32 logits of `image_embeds [B, D]` against `text_embeds [N, D]` (both
  normalised); `capped`: the scale `exp(logit_scale)` is at most 100 (CLIP)."""
  scale = jnp.minimum(logit_scale, MAX_LOGIT_SCALE) if capped else logit_scale
  sims = jnp.einsum("BD,ND->BN", image_embeds.astype(jnp.float32),
                    text_embeds.astype(jnp.float32))  # [B, N]
  return sims * jnp.exp(scale) + logit_bias


def clip_loss(logits: jax.Array) -> jax.Array:
  """CLIP's symmetric cross-entropy of square `logits [B, B]` whose diagonal holds the pairs."""
  diagonal = jnp.diagonal(logits)
  image_to_text = jax.nn.logsumexp(logits, axis=1) - diagonal  # [B]
  text_to_image = jax.nn.logsumexp(logits, axis=0) - diagonal  # [B]
  return 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))


def siglip_loss(logits: jax.Array) -> jax.Array:
  """SigLIP's pairwise sigmoid loss of square `logits [B, B]` whose diagonal holds the pairs."""
  labels = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0  # +1 pairs, -1 the rest
  return -jnp.mean(jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=1))


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}


def retrieval_accuracy(logits: jax.Array) -> dict[str, jax.Array]:
  """In-batch top-1 retrieval of square `logits [B, B]`: the share of images whose best caption
  is their own, and of captions whose best image is their own."""
  matches = jnp.arange(logits.shape[0])
  return {
      "accuracy/image_to_text": jnp.mean((jnp.argmax(logits, axis=1) == matches)
                                         .astype(jnp.float32)),
      "accuracy/text_to_image": jnp.mean((jnp.argmax(logits, axis=0) == matches)
                                         .astype(jnp.float32)),
  }

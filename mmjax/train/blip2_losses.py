"""BLIP-2's stage-1 objective (`train.objective='blip2_stage1'`): ITC + ITM + ITG on image-caption
batches, the vision tower frozen, as LAVIS' `Blip2Qformer` trains the Q-Former.

  ITC  the image-text score is the max over the queries of the cosine between each query's
       projection and the caption's; divided by the learned temperature (clamped to
       [0.001, 0.5] as BLIP clamps it), cross-entropy image -> caption and caption -> image over
       the whole global batch, label smoothing 0.1, averaged.
  ITM  per image one negative caption, per caption one negative image, sampled (no gradient)
       with probability softmax(ITC scores) + 1e-4, the pair itself excluded; the binary head
       reads B positives, then B (negative image, caption) and B (image, negative caption) rows
       with queries and text all seeing all; plain cross-entropy.
  ITG  the caption's first id (the tokenizer's BOS / [CLS]) replaced by the decoder's BOS
       ([DEC], `decoder_bos_token_id`); each text row predicts the next real token, seeing the
       queries and earlier text; cross-entropy with label smoothing 0.1, mean over tokens.

The batch arrays are global (`jax.Array`s over the mesh): indexing the whole batch's scores,
image states and captions is the all-gather LAVIS does by hand.
"""

import jax
import jax.numpy as jnp

LABEL_SMOOTHING = 0.1
TEMP_RANGE = (0.001, 0.5)
NEGATIVE_FLOOR = 1e-4  # added to the sampling weights: every other pair stays possible


def clamp_temperature(temp: jax.Array) -> jax.Array:
  """The temperature clamped to `TEMP_RANGE`, its gradient passing as if unclamped (BLIP clamps
  the parameter in place before the forward; its gradient is the unclamped one)."""
  temp = temp.astype(jnp.float32)
  return temp + jax.lax.stop_gradient(jnp.clip(temp, *TEMP_RANGE) - temp)


def cross_entropy(logits: jax.Array, targets: jax.Array, smoothing: float = 0.0,
                  weights: jax.Array | None = None) -> jax.Array:
  """torch's `F.cross_entropy(..., label_smoothing=smoothing)`: `logits [..., C]`, `targets
  [...]`, mean over the entries (weighted by `weights [...]`, e.g. a token mask)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  loss = (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)
  if weights is None:
    return jnp.mean(loss)
  weights = weights.astype(jnp.float32)
  return jnp.sum(loss * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def itc_scores(image_feats: jax.Array, text_feat: jax.Array, temp: jax.Array) -> jax.Array:
  """`image_feats [B, Q, P]`, `text_feat [N, P]` (normalised) -> `[B, N]` image-to-text scores:
  the max over queries of the cosines, over the (clamped) temperature."""
  sims = jnp.einsum("BQP,NP->BNQ", image_feats.astype(jnp.float32),
                    text_feat.astype(jnp.float32))  # [B, N, Q]
  return jnp.max(sims, axis=-1) / temp


def itc_loss(scores: jax.Array) -> jax.Array:
  """Square `scores [B, B]` (pairs on the diagonal) -> the mean of both directions'
  label-smoothed cross-entropies (text-to-image scores are the transpose)."""
  targets = jnp.arange(scores.shape[0])
  return 0.5 * (cross_entropy(scores, targets, LABEL_SMOOTHING)
                + cross_entropy(scores.T, targets, LABEL_SMOOTHING))


def hard_negatives(rng: jax.Array, scores: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Square ITC `scores [B, B]` -> (`[B]` a negative image per caption, `[B]` a negative caption
  per image), drawn with weights softmax(scores) + 1e-4 along each row, the pair itself
  excluded; no gradient."""
  scores = jax.lax.stop_gradient(scores)
  b = scores.shape[0]

  def draw(key, rows):  # rows [B, B]: row i's weights over candidates
    weights = jax.nn.softmax(rows, axis=-1) + NEGATIVE_FLOOR
    weights = jnp.where(jnp.eye(b, dtype=bool), 0.0, weights)
    return jax.random.categorical(key, jnp.log(weights), axis=-1)

  image_key, text_key = jax.random.split(rng)
  return draw(image_key, scores.T), draw(text_key, scores)


def itm_rows(states: jax.Array, ids: jax.Array, mask: jax.Array, negative_images: jax.Array,
             negative_texts: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The ITM batch of `3B` rows: (image, caption) pairs, then (negative image, caption), then
  (image, negative caption), as LAVIS orders them."""
  states_all = jnp.concatenate([states, states[negative_images], states], axis=0)
  ids_all = jnp.concatenate([ids, ids, ids[negative_texts]], axis=0)
  mask_all = jnp.concatenate([mask, mask, mask[negative_texts]], axis=0)
  return states_all, ids_all, mask_all


def itm_loss(logits: jax.Array) -> jax.Array:
  """`logits [3B, 2]` of `itm_rows` -> cross-entropy against 1 for the first B, 0 after."""
  b = logits.shape[0] // 3
  labels = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * b, jnp.int32)])
  return cross_entropy(logits, labels)


def decoder_ids(ids: jax.Array, bos: int) -> jax.Array:
  """The captions with their first id replaced by the decoder's BOS `[B, T]`."""
  return ids.at[:, 0].set(bos)


def itg_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """`logits [B, T, V]` of the decoder rows; each position predicts the next caption id where
  that id is real (`mask`); label smoothing 0.1, mean over the predicted tokens."""
  return cross_entropy(logits[:, :-1], ids[:, 1:], LABEL_SMOOTHING, mask[:, 1:])


def stage1_loss(module, params: dict, batch: dict, rng: jax.Array
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """A `Blip2Retrieval` module with `stage1` on a batch of `pixels [B, H, W, C]`, `text_ids
  [B, T]`, `text_mask [B, T]` -> (ITC + ITM + ITG, metrics). `rng` samples the negatives and
  drives dropout."""
  from mmjax.models.blip2_retrieval import Blip2Retrieval

  variables = {"params": params}
  ids, mask = batch["text_ids"], batch["text_mask"]
  negatives_key, dropout_key = jax.random.split(rng)
  kw = dict(deterministic=False, rngs={"dropout": dropout_key})
  apply = lambda method, *args, **more: module.apply(variables, *args, method=method, **more)
  # The tower is frozen: no gradient flows into it (its parameters are not trained either).
  states = jax.lax.stop_gradient(apply(Blip2Retrieval.vision_states, batch["pixels"]))
  image_feats, itg_logits = apply(Blip2Retrieval.image_feats_and_captions, states,
                                  decoder_ids(ids, module.config.decoder_bos_token_id), mask, **kw)
  text_feat = apply(Blip2Retrieval.text_feat, ids, mask, **kw)
  temp = clamp_temperature(apply(Blip2Retrieval.temperature))
  scores = itc_scores(image_feats, text_feat, temp)  # [B, B]
  loss_itc = itc_loss(scores)
  negative_images, negative_texts = hard_negatives(negatives_key, scores)
  rows = itm_rows(states, ids, mask, negative_images, negative_texts)
  loss_itm = itm_loss(apply(Blip2Retrieval.itm_logits, *rows, **kw))
  loss_itg = itg_loss(itg_logits, ids, mask)
  matches = jnp.arange(scores.shape[0])
  metrics = {"loss_itc": loss_itc, "loss_itm": loss_itm, "loss_itg": loss_itg,
             "temperature": temp,
             "accuracy/image_to_text": jnp.mean(jnp.argmax(scores, 1) == matches),
             "accuracy/text_to_image": jnp.mean(jnp.argmax(scores, 0) == matches)}
  return loss_itc + loss_itm + loss_itg, metrics

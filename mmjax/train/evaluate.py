"""Held-out evaluations on the shapes set: exact-match answer accuracy by greedy decoding, and
zero-shot image-caption retrieval for contrastive models."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import synthetic
from mmjax.nn.masks import positions_from_attention_mask
from mmjax.train.data import CaptionRow, shapes_config


def shapes_accuracy(module, params: dict, config, data: dict, *, size: int = 500,
                    max_new_tokens: int = 3, batch_size: int = 100,
                    should_stop=lambda: False) -> dict[str, float] | None:
  """Greedy answers for `size` eval-split samples; exact match against the reference answer.

  Prompts are left-padded to one length so every row's next token sits in the same column.
  `should_stop()` is asked before every decoding step (e.g. a preemption): True ends the eval
  early and returns None.
  """
  dataset = synthetic.ShapesDataset(shapes_config(data), split="eval", size=size)
  tokenizer = synthetic.load_tokenizer()
  n_img = config.tokens_per_image
  prompt_len = int(data["max_length"])
  image_first = bool(data.get("image_first", True))

  @jax.jit
  def next_tokens(params, ids, mask, pixels, last):
    """Greedy ids after column `last` `[B]`; the columns after it are masked (not yet generated)
    and, attention being causal, change nothing before them: one compile for every step."""
    positions = positions_from_attention_mask(mask)
    logits = module.apply({"params": params}, ids, pixels, positions, mask).logits
    return jnp.argmax(jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False), axis=-1)

  correct, by_kind = 0, {}
  for start in range(0, size, batch_size):
    samples = [dataset[i] for i in range(start, min(start + batch_size, size))]
    rows, pixels = [], []
    for s in samples:
      ex = synthetic.encode_example(s, tokenizer, n_img, image_first=image_first)
      rows.append(ex["input_ids"][:int(ex["prompt_length"])])
      pixels.append((ex["image"] - 0.5) / 0.5)
    ids = np.zeros((len(rows), prompt_len + max_new_tokens), np.int32)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
      ids[r, prompt_len - len(row):prompt_len] = row
      mask[r, prompt_len - len(row):prompt_len] = 1
    pixels = np.stack(pixels)
    out = []
    for t in range(max_new_tokens):  # fixed shapes: one compile; generated columns fill in
      if should_stop():
        return None
      tok = np.asarray(next_tokens(params, ids, mask, pixels, prompt_len + t - 1))
      ids[:, prompt_len + t] = tok
      mask[:, prompt_len + t] = 1
      out.append(tok)
    generated = np.stack(out, axis=1)
    for s, gen in zip(samples, generated):
      gen = list(gen)
      if synthetic.EOS_ID in gen:
        gen = gen[:gen.index(synthetic.EOS_ID)]
      ok = synthetic.exact_match(tokenizer.decode(gen), s["answer"])
      correct += ok
      k = by_kind.setdefault(s["kind"], [0, 0])
      k[0] += ok
      k[1] += 1
  result = {"eval_accuracy": correct / size}
  result.update({f"eval_accuracy/{k}": v[0] / v[1] for k, v in sorted(by_kind.items())})
  return result


def shapes_retrieval(module, params: dict, data: dict, *, size: int = 500, batch_size: int = 100,
                     should_stop=lambda: False) -> dict[str, float] | None:
  """Zero-shot retrieval among `size` eval-split images and their scene captions: the share of
  images whose most similar caption describes them, and of captions whose most similar image
  they describe (two scenes can share a caption: either image counts). `should_stop()` is asked
  before every batch; True ends the eval early and returns None."""
  from mmjax.models.registry import family_of_module

  cfg = shapes_config(data)
  dataset = synthetic.ShapesDataset(cfg, split="eval", size=size)
  pair = CaptionRow(cfg, synthetic.load_tokenizer(), int(data["max_length"]))  # as in training
  family = family_of_module(module)
  embed = jax.jit(lambda p, b: (lambda o: (o.image_embeds, o.text_embeds))(
      family.contrastive_forward(module, p, b)))
  images, texts, captions = [], [], []
  for start in range(0, size, batch_size):
    if should_stop():
      return None
    samples = [dataset[i] for i in range(start, min(start + batch_size, size))]
    captions += [synthetic.describe_scene(s["objects"], cfg) for s in samples]
    rows = [pair(s) for s in samples]
    image_embeds, text_embeds = embed(params, {k: np.stack([r[k] for r in rows])
                                               for k in rows[0]})
    images.append(np.asarray(image_embeds, np.float32))
    texts.append(np.asarray(text_embeds, np.float32))
  sims = np.concatenate(images) @ np.concatenate(texts).T  # [N, N] (scale and bias: monotone)
  captions = np.asarray(captions)
  return {"eval_retrieval/image_to_text": float(np.mean(captions[sims.argmax(1)] == captions)),
          "eval_retrieval/text_to_image": float(np.mean(captions[sims.argmax(0)] == captions))}

"""Exact-match answer accuracy on held-out shapes images, by greedy decoding."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import synthetic
from mmjax.nn.masks import positions_from_attention_mask


def shapes_accuracy(module, params: dict, config, data: dict, *, size: int = 500,
                    max_new_tokens: int = 3, batch_size: int = 100,
                    should_stop=lambda: False) -> dict[str, float] | None:
  """Greedy answers for `size` eval-split samples; exact match against the reference answer.

  Prompts are left-padded to one length so every row's next token sits in the same column.
  `should_stop()` is asked before every decoding step (e.g. a preemption): True ends the eval
  early and returns None.
  """
  cfg = synthetic.ShapesConfig(**dict(data.get("shapes", {}) or {}))
  dataset = synthetic.ShapesDataset(cfg, split="eval", size=size)
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

"""Limits on what a user hands the model, each checked once where the input enters.

- token ids must lie in `[0, vocab_size)`: a larger id gathers past the embedding table (NaN
  logits at every position, through attention), a negative one wraps around silently;
- a prompt, and a prompt plus the tokens to generate, must fit the positions the model was built
  for (`max_position_embeddings`; times `factor` for `dynamic` RoPE, which exists to run past it),
  which also bounds the KV cache that generation allocates;
- counts such as `train.steps` must be integers of at least 1.
"""

from typing import Any

import numpy as np


def decoder_of(config: Any):
  """The decoder config of a family config (LLaVA, Qwen-VL, InternVL) or a text-only one."""
  return getattr(config, "decoder", config)


def max_positions(config: Any) -> int | None:
  """The positions the model was built for; None for relative positions (T5), which have no
  table to run past."""
  rope = getattr(decoder_of(config), "rope", None)
  if rope is None:
    return None
  scale = rope.factor if rope.rope_type == "dynamic" else 1.0
  return int(rope.max_position_embeddings * scale)


def check_token_ids(ids: Any, config: Any, what: str = "input_ids") -> None:
  ids = np.asarray(ids)
  decoder = decoder_of(config)
  # The embedding table's rows: rows past the vocabulary are real tokens too (Llama 3.2 Vision's
  # `<|image|>` is the first of its 8 `extra_embeddings`; IDEFICS' `additional_vocab_size` rows).
  vocab = int(decoder.vocab_size) + int(getattr(decoder, "extra_embeddings", 0)) + \
      int(getattr(decoder, "additional_vocab_size", 0))
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{what} must be integer token ids, got {ids.dtype}")
  bad = (ids < 0) | (ids >= vocab)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{what}{list(where)} is {int(ids[where])}, outside the model's vocabulary "
                     f"[0, {vocab}) ({int(bad.sum())} such ids)")


def check_length(prompt_tokens: int, config: Any, new_tokens: int = 0) -> None:
  """`prompt_tokens` (+ `new_tokens` to generate) within the model's positions."""
  limit = max_positions(config)
  if limit is None:
    return
  if prompt_tokens > limit:
    raise ValueError(f"the prompt has {prompt_tokens} tokens, more than the model's {limit} "
                     "positions (max_position_embeddings)")
  if prompt_tokens + new_tokens > limit:
    raise ValueError(f"--max-new-tokens {new_tokens} after a {prompt_tokens}-token prompt runs "
                     f"past the model's {limit} positions (max_position_embeddings): at most "
                     f"{limit - prompt_tokens}")


def check_prompt(input_ids: Any, config: Any, new_tokens: int = 0) -> None:
  """Token ids `[B, T]` in the vocabulary and `T` (+ `new_tokens`) within the positions."""
  ids = np.asarray(input_ids)
  if ids.ndim != 2:
    raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
  check_token_ids(ids, config)
  check_length(ids.shape[1], config, new_tokens)


def require_int(value: Any, name: str, minimum: int = 1) -> int:
  """`value` as an int >= `minimum`, or a ValueError naming the config key."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)
